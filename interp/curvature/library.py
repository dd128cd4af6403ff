"""curvlinops, where the K-FAC and EK-FAC inverses and the exact GGN's products come from, imported without the
warning its dependency prints: linear_operator decorates functions with ``torch.jit.script`` at import, which torch
now answers with a ``FutureWarning`` on every command that uses curvlinops; nothing here can act on it, and it
would bury the commands' own messages. Every other warning passes."""

from __future__ import annotations

import warnings
from types import ModuleType


def curvlinops() -> ModuleType:
    """The ``curvlinops`` module (imported on first use: it takes a second)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import curvlinops
    return curvlinops

"""The curvature libraries, used without the deprecation notice they trigger in torch: ``torch.jit.script`` now
answers every call with a ``FutureWarning``, and two things this package relies on call it the first time they run.
curvlinops' dependency linear_operator decorates functions with it at import (curvlinops is where the K-FAC and
EK-FAC inverses and the exact GGN's products come from), and torch's own forward-mode AD scripts its decompositions
the first time a ``jvp`` runs (``torch.func.hessian`` and the Hessian-vector products). Nothing here can act on it,
and it would bury the commands' own messages, so :func:`quiet_jit_deprecation` hides that one warning for the block
that triggers it; every other warning passes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import ModuleType

JIT_DEPRECATION = r"`torch\.jit\.script` is deprecated"


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """The block without torch's ``torch.jit.script`` ``FutureWarning`` (:data:`JIT_DEPRECATION`); every other
    warning, and that one raised after the block, passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        yield


def curvlinops() -> ModuleType:
    """The ``curvlinops`` module (imported on first use: it takes a second)."""
    with quiet_jit_deprecation():
        import curvlinops
    return curvlinops

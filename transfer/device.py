"""Choosing the torch device from the user's ``--device auto|cpu|cuda``."""

from __future__ import annotations

import torch

from transfer.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto`` to CUDA when present, else CPU; refuse ``cuda`` when no GPU is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} was asked for but torch sees no CUDA device "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")

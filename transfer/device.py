"""Choosing the torch device from the user's ``--device auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import torch

from transfer.errors import UserError
from transfer.validation import device_name


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto`` to CUDA when present, else CPU; refuse a CUDA device torch cannot see."""
    device_name("device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device

"""The one device rule of ``interp``.

Every function that touches a model takes ``device`` (``None``: the device of the model's first
parameter or buffer, the CPU for a model without tensors) and moves each batch there with
:func:`to_device`. Matrices it returns are on the device of their inputs unless the docstring says
otherwise; arrays handed to numpy or written to disk go through :func:`to_numpy`, which moves them
to the CPU first, so nothing calls ``.numpy()`` on a tensor it did not move itself.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: the device of its first parameter (or buffer); the CPU when it has none."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``, or the model's when it is ``None``."""
    return model_device(model) if device is None else torch.device(device)


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(x, y)`` batch on ``device``, ``x`` cast to ``dtype`` when given (labels keep theirs)."""
    x = x.to(device=device, dtype=dtype) if dtype is not None else x.to(device)
    return x, y.to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy array of ``t`` (detached), wherever ``t`` lives."""
    return t.detach().cpu().numpy()


@contextmanager
def ieee_float32():
    """Within it, float32 convolutions and matmuls on CUDA run in IEEE float32, not TF32.

    PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa): features computed on a GPU
    then differ from the CPU's at about 1e-3 relative, which an influence matrix inherits. Every
    ``interp`` function that runs a model for gradients or features uses this; the previous setting
    is restored on exit. It changes nothing on the CPU.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def synced_seconds(t0: float, device: torch.device) -> float:
    """Seconds since ``t0`` (``time.perf_counter``) once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0

"""Saliency maps through captum, and how concentrated they are on the image's own structure.

Methods: ``saliency`` (|d objective / d x|, captum ``Saliency``), ``smoothgrad`` (``NoiseTunnel``
over ``Saliency``, Smilkov et al.), ``ig`` (``IntegratedGradients`` from a black baseline).
The objective is the target logit, or the per-example cross-entropy loss (``wrt="loss"``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp.device import model_device, to_device
from interp.errors import InterpError

METHODS = ("saliency", "smoothgrad", "ig")


class _PerExampleLoss(nn.Module):
    """``x, y -> CE(model(x), y)`` per example, shape ``(B,)``: captum attributes a scalar per example."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y, reduction="none")


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "saliency",
    wrt: str = "loss",
    smoothgrad_samples: int = 25,
    smoothgrad_std: float = 0.15,
    ig_steps: int = 32,
) -> torch.Tensor:
    """Attributions ``(B, 3, H, W)`` of ``method`` for images ``x`` ``(B, 3, H, W)`` with labels ``y``.

    ``wrt="loss"`` differentiates the per-example cross-entropy (the Medium post's loss gradients);
    ``wrt="logit"`` the logit of class ``y``. Runs on the model's device (``x`` and ``y`` are moved
    there) in eval mode; the model's mode is restored after, and the maps are on the model's device.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    if method not in METHODS:
        raise InterpError(f"method must be one of {METHODS}, got {method!r}")
    if wrt not in ("loss", "logit"):
        raise InterpError(f"wrt must be loss or logit, got {wrt!r}")
    device = model_device(model)
    x, y = to_device(x, y, device)
    was_training = model.training
    model.eval()
    if wrt == "loss":
        forward, kwargs = _PerExampleLoss(model), {"additional_forward_args": (y,)}
    else:
        forward, kwargs = model, {"target": y}
    x = x.clone().requires_grad_(True)
    try:
        if method == "saliency":
            return Saliency(forward).attribute(x, abs=False, **kwargs).detach()
        if method == "smoothgrad":
            nt = NoiseTunnel(Saliency(forward))
            return nt.attribute(
                x, nt_type="smoothgrad", nt_samples=smoothgrad_samples, stdevs=smoothgrad_std, abs=False, **kwargs
            ).detach()
        base = torch.zeros_like(x)
        return IntegratedGradients(forward).attribute(x, baselines=base, n_steps=ig_steps, **kwargs).detach()
    finally:
        model.train(was_training)


def magnitude(attr: torch.Tensor) -> torch.Tensor:
    """``sum_c |a_c|``: one non-negative map per image, ``(B, H, W)``."""
    return attr.abs().sum(1)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image, ``(B, H, W)``."""
    grey = x.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    return (gx**2 + gy**2).sqrt().squeeze(1)


def concentration(attr: torch.Tensor, x: torch.Tensor, top: float = 0.05) -> dict[str, np.ndarray]:
    """Per image: Pearson correlation of the attribution magnitude with the image's edges, and the
    share of attribution mass in the top ``top`` fraction of pixels (1.0 = all in those pixels)."""
    mag = magnitude(attr).flatten(1)
    edges = edge_map(x).flatten(1)
    mc, ec = mag - mag.mean(1, keepdim=True), edges - edges.mean(1, keepdim=True)
    corr = (mc * ec).sum(1) / (mc.norm(dim=1) * ec.norm(dim=1)).clamp_min(1e-12)
    k = max(1, int(round(top * mag.shape[1])))
    share = mag.topk(k, dim=1).values.sum(1) / mag.sum(1).clamp_min(1e-12)
    return {"edge_correlation": corr.cpu().numpy(), f"top{int(top * 100)}pct_mass": share.cpu().numpy()}

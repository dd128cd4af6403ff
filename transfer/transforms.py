"""Image transforms of the paper's code (Utrera et al., after the `robustness` library).

Every image arrives as a ``(C, H, W)`` uint8 tensor with ``C`` in {1, 3} and leaves as a
``(3, R, R)`` float tensor in [0, 1], where ``R`` is the model's input resolution.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.transforms import v2

from transfer.errors import UserError

Augment = Literal["paper", "none"]
AUGMENTS: tuple[str, ...] = ("paper", "none")


class ToThreeChannels(nn.Module):
    """Replicate a single grayscale channel to RGB so ImageNet-style sources accept it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x


def build_transform(resolution: int, *, train: bool, augment: Augment = "paper") -> v2.Compose:
    """The deterministic test transform, or the paper's training augmentation.

    Both upscale (or downscale) with bilinear interpolation to ``resolution x resolution`` and
    replicate grayscale to three channels. With ``train=True`` and ``augment="paper"`` they then
    apply random crop with padding 4, horizontal flip, colour jitter 0.25 (brightness, contrast,
    saturation) and random rotation of 2 degrees, as the `robustness` library's
    ``TRAIN_TRANSFORMS_DEFAULT`` that the paper used.
    """
    if augment not in AUGMENTS:
        raise UserError(f"--augment must be one of {', '.join(AUGMENTS)}; got {augment!r}")
    steps: list[nn.Module] = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize((resolution, resolution), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        ToThreeChannels(),
    ]
    if train and augment == "paper":
        steps += [
            v2.RandomCrop(resolution, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25),
            v2.RandomRotation(2),
        ]
    steps.append(v2.Lambda(lambda x: x.clamp(0.0, 1.0)))
    return v2.Compose(steps)

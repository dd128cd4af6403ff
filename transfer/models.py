"""Source architectures with their input normalisation inside the model.

Every model maps images in [0, 1] of shape ``(B, 3, R, R)`` to logits ``(B, num_classes)``:
``NormalizedModel = model(normalizer(x))``, the layout of the `robustness` library, so attacks
and visualisations work in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transfer.architectures import (  # noqa: F401  (ARCHITECTURES, SmallResNet and the constants are re-exported)
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    Architecture,
    SmallResNet,
    get_architecture,
)
from transfer.errors import UserError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are buffers saved with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A classifier over [0, 1] images: ``model(normalizer(x))``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], arch: str | None = None):
        super().__init__()
        self.normalizer = Normalize(mean, std)
        self.model = model
        self.arch = arch  # its entry in transfer.architectures (anatomy: blocks, classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(x))


HEAD_INITS = ("paper", "default")
# input sizes accepted by --resolution: below 8 px a ResNet's stem leaves nothing to pool
MIN_RESOLUTION, MAX_RESOLUTION = 8, 2048


def check_arch(arch: str) -> None:
    get_architecture(arch)


def native_size(arch: str) -> int:
    return get_architecture(arch).native_size


def build_model(
    arch: str,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """A randomly initialised ``arch`` with ``num_classes`` outputs and its normalisation inside."""
    entry = get_architecture(arch)
    return NormalizedModel(entry.make(num_classes), mean or entry.mean, std or entry.std, arch=arch)


def architecture_of(model: NormalizedModel) -> Architecture:
    """The registry entry of a model built by :func:`build_model` (a ResNet's anatomy for any other)."""
    return get_architecture(getattr(model, "arch", None) or "resnet50")


def classifier(model: NormalizedModel) -> nn.Linear:
    """The final linear layer, wherever the architecture keeps it (``fc``, ``classifier.1``)."""
    return architecture_of(model).classifier(model.model)


def classifier_names(model: NormalizedModel) -> list[str]:
    """Full parameter names of the classifier (``model.fc.weight``, ``model.classifier.1.bias``)."""
    path = architecture_of(model).linear
    return [f"model.{path}.{n}" for n, _ in classifier(model).named_parameters()]


def replace_classifier(
    model: NormalizedModel, num_classes: int, init: str = "paper", generator: torch.Generator | None = None
) -> nn.Linear:
    """Swap ``fc`` for a new ``Linear(in_features, num_classes)``.

    ``init="paper"`` draws weights from N(0, 1) and zeroes the bias, as the paper's code did
    (``nn.init.normal_`` with default arguments); ``init="default"`` keeps PyTorch's Kaiming-uniform
    initialisation. ``generator`` makes the draw reproducible without touching the global RNG.
    """
    old = classifier(model)
    head = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    with torch.no_grad():
        if init == "paper":
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator))
            head.bias.zero_()
        elif init == "default":
            bound = 1.0 / old.in_features**0.5  # PyTorch's Linear init, drawn from our generator
            head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
            head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))
        else:
            raise UserError(f"--head-init must be one of {', '.join(HEAD_INITS)}; got {init!r}")
    architecture_of(model).set_classifier(model.model, head)
    return head

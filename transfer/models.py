"""Source architectures with their input normalisation inside the model.

Every model maps images in [0, 1] of shape ``(B, 3, R, R)`` to logits ``(B, num_classes)``:
``NormalizedModel = model(normalizer(x))``, the layout of the `robustness` library, so attacks
and visualisations work in pixel space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import resnet18, resnet50, wide_resnet50_2
from torchvision.models.resnet import BasicBlock

from transfer.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)


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

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalizer = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(x))


class SmallResNet(nn.Module):
    """A ResNet for 28x28 inputs that trains in minutes on two CPU cores.

    Three stages of two torchvision ``BasicBlock``s (widths 16, 32, 64; strides 1, 2, 2), a 3x3
    stem and no max-pool: about 0.27 M parameters. Attribute names follow torchvision's ResNet
    (``conv1 bn1 relu maxpool layer1..layer3 avgpool fc``) so freezing treats both alike.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), depth: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        in_ch = widths[0]
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or in_ch != width:
                    down = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=s, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(in_ch, width, stride=s, downsample=down))
                in_ch = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> (constructor taking num_classes, native input size, default normalisation)
ARCHITECTURES: dict[str, tuple[Callable[[int], nn.Module], int, tuple, tuple]] = {
    "resnet18": (lambda n: resnet18(weights=None, num_classes=n), 224, IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": (lambda n: resnet50(weights=None, num_classes=n), 224, IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": (lambda n: wide_resnet50_2(weights=None, num_classes=n), 224, IMAGENET_MEAN, IMAGENET_STD),
    "small_resnet": (lambda n: SmallResNet(n), 28, MNIST_MEAN, MNIST_STD),
}


HEAD_INITS = ("paper", "default")
# input sizes accepted by --resolution: below 8 px a ResNet's stem leaves nothing to pool
MIN_RESOLUTION, MAX_RESOLUTION = 8, 2048


def check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def native_size(arch: str) -> int:
    check_arch(arch)
    return ARCHITECTURES[arch][1]


def build_model(
    arch: str,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """A randomly initialised ``arch`` with ``num_classes`` outputs and its normalisation inside."""
    check_arch(arch)
    make, _, default_mean, default_std = ARCHITECTURES[arch]
    return NormalizedModel(make(num_classes), mean or default_mean, std or default_std)


def classifier(model: NormalizedModel) -> nn.Linear:
    """The final linear layer (``fc``)."""
    return model.model.fc


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
    model.model.fc = head
    return head

"""Architectures as registry entries: each knows its anatomy, so nothing else takes a network apart.

An :class:`Architecture` says how to build the network, its stem, its blocks in forward order (what
"the last k blocks" fine-tunes), what turns the last block's output into features (pooling), its
classifier, its native input size and normalisation. The forward pass of every entry equals
``head(pool(block_B(... block_1(stem(x)))))``, which is what lets fine-tuning cut a frozen prefix
from a trainable suffix. Checkpoint keys are those of the bare network (torchvision's layout); the
``robustness`` library's layout (``module.model.*``, ``module.normalizer.*``) is stripped to it by
:mod:`transfer.checkpoints`, for every entry alike. A new architecture is one entry::

    from transfer.architectures import Architecture, register_architecture
    register_architecture(Architecture("resnet34", lambda n: torchvision.models.resnet34(num_classes=n),
                                       **RESNET_ANATOMY))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from transfer.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    """``num_classes -> torchvision.models.<name>(weights=None, num_classes=...)``, torchvision's model zoo imported
    when a network is built: importing it loads every model family (and torch's compiler), seconds every command
    would otherwise pay at start-up."""

    def make(num_classes: int) -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return make


def _attr(net: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        net = net[int(part)] if part.isdigit() else getattr(net, part)
    return net


@dataclass(frozen=True)
class Architecture:
    """One family's anatomy. Module names are relative to the bare network (``layer4.2``, ``fc``).

    ``stem(net)``: modules before the first block, in order. ``blocks(net)``: ``(name, module)`` of
    every block in forward order. ``pool(net)``: from the last block's output to the classifier's
    input (parameter-free). ``head``: the path of the stage applied after ``pool`` (``fc``;
    MobileNet's ``classifier``, a dropout and a linear layer), ``linear``: the path of the final
    ``nn.Linear`` inside it (the same for a ResNet). ``blocks_meaning``: what "the last k blocks" are.
    """

    name: str
    make: Callable[[int], nn.Module]
    stem: Callable[[nn.Module], list[nn.Module]]
    blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    pool: Callable[[nn.Module], nn.Module]
    head: str = "fc"
    linear: str = "fc"
    native_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    blocks_meaning: str = ""
    extra_linear_keys: tuple[str, ...] = field(default=())  # other names a checkpoint may give the final layer

    def classifier(self, net: nn.Module) -> nn.Linear:
        return _attr(net, self.linear)

    def set_classifier(self, net: nn.Module, layer: nn.Linear) -> None:
        parent, _, last = self.linear.rpartition(".")
        owner = _attr(net, parent) if parent else net
        if last.isdigit():
            owner[int(last)] = layer
        else:
            setattr(owner, last, layer)

    def trainable(self, net: nn.Module, blocks: int | str) -> list[str]:
        """Names of the modules that train with the last ``blocks`` blocks (``"all"``: every child)."""
        if blocks == "all":
            return [name for name, _ in net.named_children()]
        every = self.blocks(net)
        if blocks > len(every):
            raise UserError(
                f"--blocks {blocks} exceeds the {len(every)} residual blocks of this model; "
                f"use at most {len(every)} or 'all'"
            )
        return [name for name, _ in every[len(every) - blocks :]] + [self.head]

    def stages(self, net: nn.Module) -> list[nn.Module]:
        """``[stem, block_1, ..., block_B, pool, head]``: their composition is the network's forward pass."""
        return [nn.Sequential(*self.stem(net)), *[b for _, b in self.blocks(net)], self.pool(net), _attr(net, self.head)]


def _resnet_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        if hasattr(net, stage):
            out += [(f"{stage}.{i}", b) for i, b in enumerate(getattr(net, stage))]
    return out


RESNET_ANATOMY = {
    "stem": lambda net: [net.conv1, net.bn1, net.relu, net.maxpool],
    "blocks": _resnet_blocks,
    "pool": lambda net: nn.Sequential(net.avgpool, nn.Flatten(1)),
    "head": "fc",
    "linear": "fc",
    "blocks_meaning": "residual blocks in forward order (a ResNet-50 has 16: 1 = layer4.2, 3 = layer4.*, "
    "9 = layer3.* and layer4.*)",
}

MOBILENET_V2_ANATOMY = {
    "stem": lambda net: [net.features[0]],
    # the 17 inverted-residual blocks and the final 1x1 expansion conv (features.18): 18 blocks, so that
    # "0 blocks" trains the classifier alone and "1 block" the last conv layer with it
    "blocks": lambda net: [(f"features.{i}", net.features[i]) for i in range(1, len(net.features))],
    "pool": lambda net: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    "head": "classifier",
    "linear": "classifier.1",
    "blocks_meaning": "the 18 feature blocks after the stem: 17 inverted-residual blocks (features.1-17) and the "
    "final 1x1 expansion conv (features.18); 1 = features.18, 3 = features.16-18",
}


class ArchitectureRegistry:
    """Architectures by name; every builder, freezer and loader asks here."""

    def __init__(self):
        self._entries: dict[str, Architecture] = {}

    def register(self, arch: Architecture, replace: bool = False) -> Architecture:
        if arch.name in self._entries and not replace:
            raise UserError(f"an architecture named {arch.name!r} is registered already")
        self._entries[arch.name] = arch
        return arch

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Architecture:
        if name not in self._entries:
            raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def linear_keys(self) -> list[str]:
        """Every state-dict key a registered classifier's weight may have (to read a checkpoint's class count)."""
        keys = [f"{a.linear}.weight" for a in self._entries.values()]
        keys += [k for a in self._entries.values() for k in a.extra_linear_keys]
        return list(dict.fromkeys(keys))


class SmallResNet(nn.Module):
    """A ResNet for 28x28 inputs that trains in minutes on two CPU cores.

    Three stages of two torchvision ``BasicBlock``s (widths 16, 32, 64; strides 1, 2, 2), a 3x3
    stem and no max-pool: about 0.27 M parameters. Attribute names follow torchvision's ResNet
    (``conv1 bn1 relu maxpool layer1..layer3 avgpool fc``) so freezing treats both alike.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), depth: int = 2):
        from torchvision.models.resnet import BasicBlock

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


ARCHITECTURES = ArchitectureRegistry()
for _entry in (
    Architecture("resnet18", _torchvision("resnet18"), **RESNET_ANATOMY),
    Architecture("resnet50", _torchvision("resnet50"), **RESNET_ANATOMY, extra_linear_keys=("linear.weight",)),
    Architecture("wide_resnet50_2", _torchvision("wide_resnet50_2"), **RESNET_ANATOMY),
    Architecture("mobilenet_v2", _torchvision("mobilenet_v2"), **MOBILENET_V2_ANATOMY),
    Architecture("small_resnet", lambda n: SmallResNet(n), **RESNET_ANATOMY, native_size=28, mean=MNIST_MEAN, std=MNIST_STD),
):  # fmt: skip
    ARCHITECTURES.register(_entry)


def register_architecture(arch: Architecture, replace: bool = False) -> Architecture:
    """Add ``arch`` so that ``--arch NAME``, checkpoints recording it, freezing and influence know it."""
    return ARCHITECTURES.register(arch, replace)


def get_architecture(name: str) -> Architecture:
    return ARCHITECTURES.get(name)

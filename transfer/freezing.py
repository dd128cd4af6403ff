"""Which residual blocks train, and the split of a model into a frozen prefix and a trainable suffix.

A ResNet is the composition ``normalizer -> stem -> block_1 -> ... -> block_B -> pool -> fc``.
Fine-tuning ``k`` blocks trains ``fc`` and ``block_{B-k+1..B}``; for a ResNet-50 (B = 16)
1 = ``layer4.2``, 3 = ``layer4.*``, 9 = ``layer4.*`` and ``layer3.*``; ``all`` trains everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transfer.errors import UserError
from transfer.models import NormalizedModel

ALL_BLOCKS = "all"


def residual_blocks(model: NormalizedModel) -> list[tuple[str, nn.Module]]:
    """The residual blocks in forward order, named as in ``named_parameters`` (``layer4.2``)."""
    net = model.model
    blocks = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        if hasattr(net, stage):
            blocks += [(f"{stage}.{i}", b) for i, b in enumerate(getattr(net, stage))]
    return blocks


def parse_blocks(value: str | int) -> int | str:
    """``"all"`` or a non-negative block count."""
    if str(value) == ALL_BLOCKS:
        return ALL_BLOCKS
    try:
        k = int(value)
    except ValueError:
        raise UserError(f"--blocks must be a number or 'all', got {value!r}") from None
    if k < 0:
        raise UserError(f"--blocks must be >= 0, got {k}")
    return k


def trainable_module_names(model: NormalizedModel, blocks: int | str) -> list[str]:
    """Names (relative to ``model.model``) of the modules that train: the last ``blocks`` and ``fc``."""
    all_blocks = residual_blocks(model)
    if blocks == ALL_BLOCKS:
        return [name for name, _ in model.model.named_children()]
    if blocks > len(all_blocks):
        raise UserError(
            f"--blocks {blocks} exceeds the {len(all_blocks)} residual blocks of this model; "
            f"use at most {len(all_blocks)} or 'all'"
        )
    return [name for name, _ in all_blocks[len(all_blocks) - blocks :]] + ["fc"]


def unfreeze_last_blocks(model: NormalizedModel, blocks: int | str) -> list[str]:
    """Set ``requires_grad`` on exactly the trainable parameters; return their full names."""
    prefixes = tuple(f"model.{n}." for n in trainable_module_names(model, blocks))
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            names.append(name)
    return names


@dataclass
class Split:
    """``model(x) == suffix(prefix(x))``; ``prefix`` holds no trainable parameter."""

    prefix: nn.Sequential
    suffix: nn.Sequential


def split_frozen_prefix(model: NormalizedModel, blocks: int | str) -> Split:
    """Cut a torchvision-style ResNet before its first trainable block.

    The stages share their modules with ``model`` (no copy), so training the suffix trains the model.
    """
    net = model.model
    stages: list[nn.Module] = [model.normalizer, nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)]
    stages += [b for _, b in residual_blocks(model)]
    stages += [nn.Sequential(net.avgpool, nn.Flatten(1)), net.fc]
    trainable_module_names(model, blocks)  # validates the block count
    # the last two stages (pool, fc) always train; before them, ``blocks`` residual blocks
    cut = 0 if blocks == ALL_BLOCKS else len(stages) - 2 - blocks
    return Split(prefix=nn.Sequential(*stages[:cut]), suffix=nn.Sequential(*stages[cut:]))

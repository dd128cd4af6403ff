"""Which residual blocks train, and the split of a model into a frozen prefix and a trainable suffix.

A ResNet is the composition ``normalizer -> stem -> block_1 -> ... -> block_B -> pool -> fc``.
Fine-tuning ``k`` blocks trains ``fc`` and ``block_{B-k+1..B}``; for a ResNet-50 (B = 16)
1 = ``layer4.2``, 3 = ``layer4.*``, 9 = ``layer4.*`` and ``layer3.*``; ``all`` trains everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transfer.errors import UserError
from transfer.models import NormalizedModel, architecture_of

ALL_BLOCKS = "all"


def residual_blocks(model: NormalizedModel) -> list[tuple[str, nn.Module]]:
    """The blocks in forward order, named relative to the bare network (``layer4.2``, ``features.17``):
    what the model's architecture entry says "the last k blocks" are."""
    return architecture_of(model).blocks(model.model)


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
    """Names (relative to ``model.model``) of the modules that train: the last ``blocks`` and the head."""
    return architecture_of(model).trainable(model.model, blocks)


def trainable_names(model: NormalizedModel, blocks: int | str) -> list[str]:
    """Full names of the parameters that fine-tuning ``blocks`` trains (the last ``blocks`` and the head)."""
    prefixes = tuple(f"model.{n}." for n in trainable_module_names(model, blocks))
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def unfreeze_last_blocks(model: NormalizedModel, blocks: int | str) -> list[str]:
    """Set ``requires_grad`` on exactly the trainable parameters; return their full names."""
    names = trainable_names(model, blocks)
    for name, p in model.named_parameters():
        p.requires_grad_(name in set(names))
    return names


@dataclass
class Split:
    """``model(x) == suffix(prefix(x))``; ``prefix`` holds no trainable parameter."""

    prefix: nn.Sequential
    suffix: nn.Sequential


def split_frozen_prefix(model: NormalizedModel, blocks: int | str) -> Split:
    """Cut the network before its first trainable block (its architecture entry gives the stages).

    The stages share their modules with ``model`` (no copy), so training the suffix trains the model.
    """
    stages: list[nn.Module] = [model.normalizer, *architecture_of(model).stages(model.model)]
    trainable_module_names(model, blocks)  # validates the block count
    # the last two stages (pool, fc) always train; before them, ``blocks`` residual blocks
    cut = 0 if blocks == ALL_BLOCKS else len(stages) - 2 - blocks
    return Split(prefix=nn.Sequential(*stages[:cut]), suffix=nn.Sequential(*stages[cut:]))

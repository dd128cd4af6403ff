"""Choosing the parameters that influence functions differentiate with respect to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from interp.errors import InterpError

ParamSpec = str | Sequence[str] | nn.Module | None


def select_params(model: nn.Module, params: ParamSpec = None) -> dict[str, nn.Parameter]:
    """Resolve ``params`` to ``{name: parameter}`` in ``model.named_parameters()`` order.

    ``params`` may be ``None`` (every parameter with ``requires_grad``), a submodule of ``model``
    (``model.fc``), a module path (``"fc"``, ``"model.fc"``, ``"layer4.2"``: every parameter under
    that module), or a list of exact parameter names (each kept once, whatever the list's order or repeats). A
    module path that is a full path names that module; otherwise it is matched at the end of the full paths and
    must match exactly one: in a ResNet wrapped as ``model.*``, ``conv1`` ends the stem's path and every block's
    (an error that lists the matches), while ``model.conv1``, a full path, is the stem's alone. Unknown names get
    the list of valid module paths.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    elif isinstance(params, nn.Module):
        ids = {id(p) for p in params.parameters()}
        chosen = [n for n, p in named.items() if id(p) in ids]
    elif isinstance(params, str):
        paths = [m for m, _ in model.named_modules() if m]
        matches = [params] if params in paths else [m for m in paths if m.endswith("." + params)]
        if len(matches) > 1:
            shown = ", ".join(matches[:8]) + (f", ... ({len(matches)} in all)" if len(matches) > 8 else "")
            raise InterpError(f"{params!r} matches {len(matches)} modules: {shown}; give the full path of one")
        chosen = [n for n in named if matches and _under(n, matches[0])]
    else:
        missing = [n for n in params if n not in named]
        if missing:
            raise InterpError(f"unknown parameter names {missing}; the model has e.g. {list(named)[-4:]}")
        chosen = [n for n in named if n in set(params)]
    if not chosen:
        modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in named))  # forward order: the head comes last
        shown = ", ".join(modules[-12:])
        raise InterpError(f"no parameters match {params!r}; module paths with parameters (the last 12): {shown}")
    return {n: named[n] for n in chosen}


def _under(name: str, module: str) -> bool:
    """Parameter ``name`` belongs to module ``module`` (a full path) or to one of its submodules."""
    return name.startswith(module + ".")


def flat_size(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def flat_positions(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each selected parameter's positions in the flat layout of ``names`` (each flattened, in that order)."""
    named = dict(model.named_parameters())
    out, start = {}, 0
    for n in names:
        out[n], start = torch.arange(start, start + named[n].numel()), start + named[n].numel()
    return out


def fixed_tensors(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every parameter not in ``names`` (detached) and every buffer: what ``functional_call`` holds fixed."""
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in set(names)}
    return fixed | dict(model.named_buffers())

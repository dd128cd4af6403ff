"""Per-example gradients of the loss for any parameters (``torch.func``).

Layout: the selected parameters in ``named_parameters`` order, each flattened, concatenated (for a
linear layer: ``weight.flatten()`` then ``bias``). The closed forms of a softmax head are in
:mod:`interp.curvature.head`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from interp.curvature.params import ParamSpec, fixed_tensors, select_params
from interp.device import ieee_float32, resolve, to_device

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _functional_loss(model: nn.Module, names: list[str], loss_fn: Loss):
    """``(theta, x, y) -> loss`` of one example, with every other tensor of ``model`` held fixed."""
    fixed = fixed_tensors(model, names)

    def loss(theta: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **theta}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return loss


def per_example_grad_batches(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    loss_fn: Loss = F.cross_entropy,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "per-example gradients",
) -> Iterator[torch.Tensor]:
    """The rows of :func:`per_example_grads` one batch of ``loader`` at a time, ``(b, P)`` each: for parameter
    sets whose ``n x P`` matrix would not fit, so that each batch is used and dropped."""
    names = list(select_params(model, params))  # resolved on the original: ``params`` may be its submodule
    dev = resolve(model, device)
    model = as_eval_copy(model, dtype, dev)
    named = dict(model.named_parameters())
    theta = {k: named[k].detach() for k in names}
    g_fn = vmap(grad(_functional_loss(model, list(theta), loss_fn)), in_dims=(None, 0, 0))
    for x, y in tqdm(loader, desc=desc, disable=not progress):
        with ieee_float32():
            g = g_fn(theta, *to_device(x, y, dev, dtype))
        yield torch.cat([g[k].flatten(1) for k in theta], dim=1)


def per_example_grads(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    loss_fn: Loss = F.cross_entropy,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Gradients ``g_i = d loss(f(x_i), y_i) / d theta`` of every example, shape ``(n, P)``, on ``device``.

    Computed with ``torch.func.vmap(grad(...))`` on an eval-mode copy of the model (fixed
    BatchNorm statistics) in ``dtype`` on ``device`` (default: the model's); the caller's model is
    not changed. ``loader`` yields ``(x, y)`` batches.
    """
    rows = list(per_example_grad_batches(model, loader, params, loss_fn=loss_fn, dtype=dtype, device=device,
                                         progress=progress))  # fmt: skip
    return torch.cat(rows)


def as_eval_copy(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A deep copy of ``model`` in ``dtype`` on ``device``, in eval mode: the caller's model is left alone."""
    import copy

    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()

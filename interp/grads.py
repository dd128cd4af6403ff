"""Per-example gradients of the loss, generic (``torch.func``) and closed-form for a linear head.

Layout. The generic path flattens the selected parameters in ``named_parameters`` order and
concatenates them (for a linear layer: ``weight.flatten()`` then ``bias``). The linear-head
functions use the *folded* layout ``W~ = [W | b]`` of shape ``(C, D+1)`` flattened row-major, so
the gradient of example ``i`` is the Kronecker product ``(p_i - e_{y_i}) kron [z_i; 1]``;
:func:`folded_to_canonical` maps between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from interp.params import ParamSpec, fixed_tensors, select_params

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _functional_loss(model: nn.Module, names: list[str], loss_fn: Loss):
    """``(theta, x, y) -> loss`` of one example, with every other tensor of ``model`` held fixed."""
    fixed = fixed_tensors(model, names)

    def loss(theta: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **theta}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return loss


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
    """Gradients ``g_i = d loss(f(x_i), y_i) / d theta`` of every example, shape ``(n, P)``.

    The model is evaluated in eval mode (fixed BatchNorm statistics) in ``dtype``; ``loader``
    yields ``(x, y)`` batches. Computed with ``torch.func.vmap(grad(...))``.
    """
    names = list(select_params(model, params))  # resolved on the original: ``params`` may be its submodule
    model = _as_eval_copy(model, dtype, device)
    named = dict(model.named_parameters())
    theta = {k: named[k].detach() for k in names}
    g_fn = vmap(grad(_functional_loss(model, list(theta), loss_fn)), in_dims=(None, 0, 0))
    dev = next(iter(theta.values())).device
    rows = []
    for x, y in tqdm(loader, desc="per-example gradients", disable=not progress):
        g = g_fn(theta, x.to(dev, dtype), y.to(dev))
        rows.append(torch.cat([g[k].flatten(1) for k in theta], dim=1))
    return torch.cat(rows)


def _as_eval_copy(model: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    import copy

    out = copy.deepcopy(model).to(dtype=dtype)
    if device is not None:
        out = out.to(device)
    return out.eval()


def softmax_residuals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_i - e_{y_i}``, the gradient of cross-entropy with respect to the logits, ``(n, C)``."""
    return torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)


def with_bias_column(z: torch.Tensor) -> torch.Tensor:
    """``[z, 1]``: features ``(n, D)`` with a column of ones for the folded bias, ``(n, D+1)``."""
    return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], dim=1)


def linear_head_grads(z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed-form per-example gradients of softmax cross-entropy over ``[W | b]``, folded layout.

    ``g_i = (p_i - e_{y_i}) kron [z_i; 1]``, shape ``(n, C (D+1))``.
    """
    r = softmax_residuals(logits, y)
    return (r.unsqueeze(2) * with_bias_column(z).unsqueeze(1)).flatten(1)


def folded_to_canonical(num_classes: int, in_features: int) -> torch.Tensor:
    """Index ``perm`` with ``canonical = folded[perm]``: ``[W.flatten(), b]`` from ``[W | b]``."""
    c, d = num_classes, in_features
    weight = (torch.arange(c).unsqueeze(1) * (d + 1) + torch.arange(d)).flatten()
    bias = torch.arange(c) * (d + 1) + d
    return torch.cat([weight, bias])


@torch.no_grad()
def head_features(
    model: nn.Module, head: nn.Linear, loader: Iterable, *, device=None, progress: bool = False, desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs ``z`` of ``head`` ``(n, D)``, the model's logits ``(n, C)`` and labels ``(n,)``.

    Checks that the model's output *is* the head's output (the head is the last operation), which
    the closed forms assume.
    """
    captured = {}

    def hook(module, inputs, output):
        captured["z"], captured["out"] = inputs[0], output

    handle = head.register_forward_hook(hook)
    model.eval()
    zs, logits, ys = [], [], []
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress):
            out = model(x.to(device) if device is not None else x)
            if captured.get("out") is not out:
                from interp.errors import InterpError

                raise InterpError("the chosen linear layer is not the model's last operation; use the generic path")
            zs.append(captured["z"].detach().flatten(1).cpu())
            logits.append(out.detach().cpu())
            ys.append(y.cpu())
    finally:
        handle.remove()
    return torch.cat(zs), torch.cat(logits), torch.cat(ys)

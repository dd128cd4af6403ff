"""Exact Hessians of the mean training loss, dense (generic ``torch.func``, or the closed form of a linear head), and
Hessian-vector products without forming it.

The closed form (see :mod:`interp.curvature.head`) is used when the parameters are exactly one ``nn.Linear``
that produces the model's output under cross-entropy; every other selection goes through
``torch.func.hessian`` batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.func import hessian as func_hessian
from tqdm.auto import tqdm

from interp.curvature.grads import Loss, as_eval_copy
from interp.curvature.head import folded_to_canonical, head_features, linear_head_hessian
from interp.curvature.library import quiet_jit_deprecation
from interp.curvature.memory import available_bytes, check_dense_fits, device_free_bytes  # noqa: F401  (re-exported)
from interp.curvature.params import ParamSpec, fixed_tensors, flat_size, select_params
from interp.curvature.products import CurvatureProducts
from interp.device import ieee_float32, resolve, to_device
from interp.errors import InterpError


def find_linear(model: nn.Module, names: list[str]) -> nn.Linear | None:
    """The ``nn.Linear`` whose parameters are exactly ``names``, if there is one."""
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Linear):
            own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
            if sorted(own) == sorted(names):
                return module
    return None


def hessian(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    loss_fn: Loss = F.cross_entropy,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_bytes: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Hessian ``(P, P)`` of the MEAN loss over ``loader`` with respect to ``params``, on ``device``.

    Computed on an eval-mode copy of the model in ``dtype`` on ``device`` (default: the model's),
    so the caller's model is not changed.
    ``H = d^2/d theta^2 [1/n sum_i loss(f(x_i; theta), y_i)]`` in the model's eval mode, flattened
    like :func:`interp.curvature.grads.per_example_grads` (``named_parameters`` order). ``loss_fn`` returns
    the mean over a batch. ``method="auto"`` uses the closed form when ``params`` is exactly one
    ``nn.Linear`` that produces the model's output under cross-entropy, else ``torch.func.hessian``
    batch by batch; ``"closed_form"`` or ``"func"`` force one. A matrix that will not fit in
    memory is refused before any work.
    """
    if method not in ("auto", "closed_form", "func"):
        raise InterpError(f"method must be auto, closed_form or func, got {method!r}")
    selected = select_params(model, params)
    p = flat_size(selected)
    device = resolve(model, device)
    check_dense_fits(p, max_bytes=max_bytes, device=device)
    head = find_linear(model, list(selected)) if loss_fn is F.cross_entropy else None
    if method == "closed_form" and head is None:
        raise InterpError("the closed form needs params to be exactly one nn.Linear under cross-entropy")
    if head is not None and method != "func":
        copy = as_eval_copy(model, dtype, device)
        copy_head = find_linear(copy, list(selected))
        try:
            z, logits, _ = head_features(copy, copy_head, loader, device=device, dtype=dtype, progress=progress)
        except InterpError:
            if method == "closed_form":
                raise
        else:
            h = linear_head_hessian(z, logits, progress=progress)
            if copy_head.bias is None:  # drop the folded bias rows
                keep = torch.tensor([i for i in range(h.shape[0]) if (i + 1) % (z.shape[1] + 1) != 0], device=device)
                return h[keep][:, keep]
            perm = folded_to_canonical(logits.shape[1], z.shape[1]).to(device)
            return h[perm][:, perm]
    return _func_hessian(model, loader, list(selected), loss_fn, dtype, device, progress, max_bytes)


# Working memory of torch.func.hessian (forward-over-reverse) per example, in units of
# P x (bytes of the activations from the first selected parameter on): measured 2.0 on a small
# ResNet (P = 906, 0.23 GiB per 28 px image); 4 leaves room for the allocator and other models.
WORK_PER_TANGENT = 4.0


def downstream_activation_bytes(model: nn.Module, names: list[str], x1: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module from the first one that owns a selected parameter on,
    for the one-example batch ``x1``: what each of the ``P`` tangents of the Hessian carries."""
    owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in names}
    sizes: list[tuple[str, int]] = []
    hooks = [
        module.register_forward_hook(
            lambda m, i, o, name=name: sizes.append((name, o.numel() * o.element_size() if torch.is_tensor(o) else 0))
        )
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    first = next((i for i, (name, _) in enumerate(sizes) if name in owners), 0)
    return max(sum(b for _, b in sizes[first:]), x1.numel() * x1.element_size())


def hessian_batch_size(per_example: int, p: int, dtype: torch.dtype, limit: int) -> int:
    """Examples per ``torch.func.hessian`` call that fit in ``limit`` bytes beside the two ``P x P`` matrices.

    Raises with the numbers when not even one example fits.
    """
    item = torch.empty((), dtype=dtype).element_size()
    room = limit - 2 * p * p * item
    if room < per_example:
        raise InterpError(
            f"the Hessian over {p} parameters needs about {per_example / 2**30:.2f} GiB of working memory per image "
            f"plus {2 * p * p * item / 2**30:.2f} GiB for the matrix, more than the {limit / 2**30:.2f} GiB available; "
            "select fewer parameters or use the matrix-free path (--method cg)"
        )
    return int(room // per_example)


@ieee_float32()
def _func_hessian(model, loader, names, loss_fn, dtype, device, progress, max_bytes=None) -> torch.Tensor:
    """Sum of ``torch.func.hessian`` over batches re-cut to the size that fits in memory (see
    :func:`hessian_batch_size`): a loader's batch of 256 would otherwise need P x 256 copies of the
    activations and be killed by the kernel instead of refused."""
    model = as_eval_copy(model, dtype, device)
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    fixed = fixed_tensors(model, names)
    theta = torch.cat([named[n].detach().flatten() for n in names])

    def batch_loss_sum(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)), strict=True))
        return loss_fn(functional_call(model, {**fixed, **parts}, (x,)), y) * len(y)

    limit = max_bytes if max_bytes is not None else device_free_bytes(theta.device)  # before H is allocated
    h, n, step = torch.zeros(len(theta), len(theta), dtype=dtype, device=theta.device), 0, None
    for x, y in tqdm(loader, desc="Hessian (torch.func)", disable=not progress):
        x, y = to_device(x, y, theta.device, dtype)
        if step is None:
            per_example = WORK_PER_TANGENT * len(theta) * downstream_activation_bytes(model, names, x[:1])
            step = hessian_batch_size(int(per_example), len(theta), dtype, limit)
        for start in range(0, len(y), step):
            with quiet_jit_deprecation():  # forward-mode AD's first use (interp.curvature.library)
                h += func_hessian(batch_loss_sum)(theta, x[start : start + step], y[start : start + step])
        n += len(y)
    return h / n


def hessian_vector_product(
    model: torch.nn.Module,
    loader,
    params=None,
    *,
    loss_fn=None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> CurvatureProducts:
    """``v -> H v`` for the Hessian of the MEAN loss over ``loader``, without forming ``H``.

    Forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), vectorised over the columns
    of ``v`` ``(P, k)``, on an eval-mode copy of the model on ``device`` (default: the model's); the
    batches of ``loader`` are held there, and products are returned there. Returns the
    :class:`~interp.curvature.CurvatureProducts` (it unpacks as ``(matvec, P)``);
    ``interp.ConjugateGradientInverse(matvec, P, on=device)`` turns it into an inverse.
    """
    loss_fn = loss_fn or F.cross_entropy
    names = list(select_params(model, params))
    dev = resolve(model, device)
    model = as_eval_copy(model, dtype, dev)
    named = dict(model.named_parameters())
    fixed = fixed_tensors(model, names)
    theta = {k: named[k].detach() for k in names}
    sizes = [theta[k].numel() for k in names]
    batches = [to_device(x, y, dev, dtype) for x, y in loader]
    n = sum(len(y) for _, y in batches)

    def total_loss(th):
        return sum(loss_fn(functional_call(model, {**fixed, **th}, (x,)), y) * len(y) for x, y in batches) / n

    def hvp_one(v_flat):
        v = {k: t.view(theta[k].shape) for k, t in zip(names, v_flat.split(sizes), strict=True)}
        _, hv = jvp(grad(total_loss), (theta,), (v,))
        return torch.cat([hv[k].flatten() for k in names])

    batched = vmap(hvp_one, in_dims=1, out_dims=1)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        with ieee_float32(), quiet_jit_deprecation():  # forward-mode AD's first use (interp.curvature.library)
            return batched(v.to(dev, dtype))

    return CurvatureProducts(matvec, sum(sizes), dev, dtype, "Hessian-vector products (torch.func, forward over reverse)")

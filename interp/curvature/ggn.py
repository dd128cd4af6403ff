"""The exact Gauss-Newton matrix of the mean cross-entropy loss: dense, per layer block, and as products.

For logits ``z_i = f(x_i; theta)`` and ``p_i = softmax(z_i)`` the GGN is

    G = 1/n sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i,          J_i = dz_i / d theta   (C x P),

the Hessian with the second derivative of the network dropped: positive semi-definite, equal to the
Hessian for a linear head, and the matrix K-FAC and EK-FAC approximate. With
``S_i = diag(sqrt p_i) - p_i sqrt(p_i)^T`` (``S_i S_i^T = diag(p_i) - p_i p_i^T``, using
``sum p = 1``) it is ``G = M^T M / n`` for the ``(n C, P)`` matrix ``M`` of rows ``S_i^T J_i``: the
per-example Jacobians come from ``torch.func`` (``vmap(jacrev)``), ``M`` is formed a batch at a time
and never held whole. Written here rather than taken from curvlinops' ``GGNLinearOperator``, whose
matrix-matrix product vmaps over every column at once (29 GB for the 2,954 x 2,954 GGN of a small
ResNet's conv and head); its products agree with this to 1e-14 (tests), and :func:`ggn_vector_product`
uses it where only products are needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import tqdm

from interp.curvature.grads import as_eval_copy
from interp.curvature.library import curvlinops
from interp.curvature.memory import GGN_ALTERNATIVE, check_fits, device_free_bytes
from interp.curvature.params import ParamSpec, fixed_tensors, flat_positions, select_params
from interp.curvature.products import CurvatureProducts
from interp.device import ieee_float32, resolve, to_device
from interp.errors import InterpError


def _softmax_root(logits: torch.Tensor) -> torch.Tensor:
    """``S`` ``(b, C, C)`` with ``S S^T = diag(p) - p p^T``, ``p = softmax(logits)``."""
    p = torch.softmax(logits, dim=1)
    s = p.sqrt()
    return torch.diag_embed(s) - p.unsqueeze(2) * s.unsqueeze(1)


def _jacobian_rows(model: nn.Module, names: list[str], dtype, device):
    """``(x) -> (M_batch, b)``: the rows ``S_i^T J_i`` of a batch, ``(b C, P)``, in ``names`` order."""
    fixed = fixed_tensors(model, names)
    named = dict(model.named_parameters())
    theta = {k: named[k].detach() for k in names}

    def logits_one(th, x):
        z = functional_call(model, {**fixed, **th}, (x.unsqueeze(0),)).squeeze(0)
        return z, z.detach()  # the logits come back beside their Jacobian: one forward pass, not two

    jac = vmap(jacrev(logits_one, has_aux=True), in_dims=(None, 0))

    def rows(x: torch.Tensor) -> torch.Tensor:
        j, logits = jac(theta, x)
        j = torch.cat([j[k].reshape(len(x), logits.shape[1], -1) for k in names], dim=2)  # (b, C, P)
        m = torch.einsum("bcd,bcp->bdp", _softmax_root(logits), j)
        return m.reshape(-1, m.shape[2])

    return rows


@ieee_float32()
def ggn_blocks(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    blocks: Sequence[Sequence[str]] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_bytes: int | None = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """The exact GGN's diagonal blocks: one ``(P_b, P_b)`` matrix per group of parameter names in ``blocks``
    (default: one block of every selected parameter, the whole GGN), each in ``named_parameters`` order.

    Cross-block entries are never formed, so the memory is that of the blocks alone (checked before any
    work). Computed on an eval-mode copy of the model in ``dtype`` on ``device`` (default: the model's).
    """
    names = list(select_params(model, params))
    groups = [list(names)] if blocks is None else [list(b) for b in blocks]
    if sorted(n for g in groups for n in g) != sorted(names):
        raise InterpError("the GGN blocks must cover the selected parameters exactly once each")
    dev = resolve(model, device)
    named = dict(model.named_parameters())
    sizes = {n: named[n].numel() for n in names}
    item = torch.empty((), dtype=dtype).element_size()
    need = sum(sum(sizes[n] for n in g) ** 2 for g in groups)
    p, widest = sum(sizes.values()), max(sum(sizes[n] for n in g) for g in groups)
    what = (
        f"the exact GGN over {p} parameters (a dense {p} x {p} matrix)"
        if len(groups) == 1
        else f"the exact GGN's {len(groups)} layer blocks over {p} parameters (the largest {widest} x {widest})"
    )
    check_fits(3.0 * need * item, what, GGN_ALTERNATIVE, max_bytes, dev)
    pos = flat_positions(model, names)
    index = [torch.cat([pos[n] for n in g]).to(dev) for g in groups]
    start = sum(sizes.values())
    copy = as_eval_copy(model, dtype, dev)
    rows = _jacobian_rows(copy, names, dtype, dev)
    out = [torch.zeros(len(i), len(i), dtype=dtype, device=dev) for i in index]
    limit = (max_bytes if max_bytes is not None else device_free_bytes(dev)) - need * item
    n, step = 0, None
    for x, y in tqdm(loader, desc="GGN (exact)", disable=not progress):
        x, _ = to_device(x, y, dev, dtype)
        if step is None:  # the Jacobian of a batch: b x C x P, twice (jacrev's and the product)
            classes = int(functional_call(copy, dict(copy.named_parameters()), (x[:1],)).shape[1])
            per_example = 4 * classes * start * item
            step = max(1, int(max(limit, per_example) // per_example))
        for s in range(0, len(x), step):
            m = rows(x[s : s + step])
            for block, idx in zip(out, index, strict=True):
                mb = m[:, idx]
                block += mb.T @ mb
        n += len(x)
    if n == 0:
        raise InterpError("the loader yielded no examples")
    return [b / n for b in out]


@ieee_float32()
def ggn_factor(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``M / sqrt(n)``, ``(n C, P)``, with ``G = (M / sqrt n)^T (M / sqrt n)``: the exact GGN as a factor, whose
    products ``G v`` then cost two matrix products instead of a pass over the data (for P and n C small
    enough that ``n C P`` numbers fit; :func:`ggn_products` chooses)."""
    names = list(select_params(model, params))
    dev = resolve(model, device)
    rows = _jacobian_rows(as_eval_copy(model, dtype, dev), names, dtype, dev)
    parts, n = [], 0
    for x, y in tqdm(loader, desc="GGN factor", disable=not progress):
        parts.append(rows(to_device(x, y, dev, dtype)[0]))
        n += len(x)
    if n == 0:
        raise InterpError("the loader yielded no examples")
    return torch.cat(parts) / n**0.5


def factor_rows(model: nn.Module, loader: Iterable, params: ParamSpec = None, device=None) -> int:
    """``n C``: the rows of :func:`ggn_factor` (examples times classes), without a pass over the data where the
    loader says its size (one batch is run for the number of classes)."""
    dev = resolve(model, device)
    dataset = getattr(loader, "dataset", None)
    n = len(dataset) if dataset is not None else sum(len(y) for _, y in loader)
    x1 = next(iter(loader))[0][:1].to(dev, torch.float64)
    with torch.no_grad():
        return n * int(as_eval_copy(model, torch.float64, dev)(x1).shape[1])


def factor_fits(model: nn.Module, loader: Iterable, names, device, dtype=torch.float64,
                max_bytes: int | None = None) -> bool:  # fmt: skip
    """Whether :func:`ggn_factor`'s ``n C P`` numbers of ``dtype`` take at most a quarter of ``max_bytes`` (default:
    the memory free on ``device``): the rule by which the factor is cached instead of a pass over the data a product."""
    p = sum(t.numel() for t in select_params(model, names).values())
    item = torch.empty((), dtype=dtype).element_size()
    limit = max_bytes if max_bytes is not None else device_free_bytes(device)
    return 4 * factor_rows(model, loader, names, device) * p * item <= limit


def ggn_products(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_bytes: int | None = None,
) -> CurvatureProducts:
    """``v -> G v`` through the cached factor of :func:`ggn_factor` when ``n C P`` numbers take at most a quarter of
    the memory free on the device, else curvlinops' products, one pass over the data each; ``description`` says
    which."""
    names = list(select_params(model, params))
    dev = resolve(model, device)
    if factor_fits(model, loader, names, dev, dtype, max_bytes):
        m = ggn_factor(model, loader, names, dtype=dtype, device=dev)
        return CurvatureProducts(lambda v: m.T @ (m @ v.to(dev, dtype)), m.shape[1], dev, dtype,
                                 f"cached GGN factor ({m.shape[0]} x {m.shape[1]})", factor=m)  # fmt: skip
    return ggn_vector_product(model, loader, names, dtype=dtype, device=dev)


def ggn(model: nn.Module, loader: Iterable, params: ParamSpec = None, **kwargs) -> torch.Tensor:
    """The exact GGN ``(P, P)`` of the mean cross-entropy over ``loader`` (see the module's docstring)."""
    return ggn_blocks(model, loader, params, None, **kwargs)[0]


def layer_blocks(model: nn.Module, names: Sequence[str]) -> list[list[str]]:
    """The selected parameter names grouped by the module that owns them (a layer's weight with its bias),
    in forward order: the blocks of a block-diagonal GGN."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    return list(groups.values())


class DeviceData:
    """A re-iterable view of ``loader`` whose batches arrive on ``device`` in ``dtype`` (what curvlinops reads)."""

    def __init__(self, loader: Iterable, device: torch.device, dtype: torch.dtype):
        self.loader, self.device, self.dtype = loader, device, dtype

    def __iter__(self):
        for x, y in self.loader:
            yield to_device(x, y, self.device, self.dtype)


def curvlinops_model(model: nn.Module, names: Sequence[str], dtype: torch.dtype, device) -> tuple[nn.Module, list]:
    """An eval-mode copy of ``model`` whose selected parameters alone require gradients, and those parameters
    in ``names`` order: what curvlinops' operators take."""
    copy = as_eval_copy(model, dtype, device)
    for p in copy.parameters():
        p.requires_grad_(False)
    named = dict(copy.named_parameters())
    chosen = [named[n] for n in names]
    for p in chosen:
        p.requires_grad_(True)
    return copy, chosen


def ggn_vector_product(
    model: nn.Module,
    loader: Iterable,
    params: ParamSpec = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> CurvatureProducts:
    """``v -> G v`` for the exact GGN, from curvlinops' ``GGNLinearOperator`` (one pass over ``loader`` a
    product, its columns ``(P, k)`` vmapped); unpacks as ``(matvec, P)``."""
    GGNLinearOperator = curvlinops().GGNLinearOperator

    names = list(select_params(model, params))
    dev = resolve(model, device)
    copy, chosen = curvlinops_model(model, names, dtype, dev)
    op = GGNLinearOperator(copy, nn.CrossEntropyLoss(), chosen, DeviceData(loader, dev, dtype),
                           check_deterministic=False)  # fmt: skip
    size = sum(p.numel() for p in chosen)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        with ieee_float32():
            return op @ v.to(dev, dtype)

    return CurvatureProducts(matvec, size, dev, dtype, "curvlinops GGN-vector products (one pass over the data each)")

"""Exact Hessians of the mean training loss: generic (``torch.func``) and closed form for a linear head.

For softmax cross-entropy on a linear head ``logits = W z + b`` with ``p_i = softmax(W z_i + b)``,
in the folded layout ``[W | b]`` (see :mod:`interp.grads`):

    H = 1/n sum_i (diag(p_i) - p_i p_i^T) kron z~_i z~_i^T,     z~_i = [z_i; 1].

Block ``(c, c')`` of size ``(D+1, D+1)`` is ``Z~^T diag(a_{:, c, c'}) Z~ / n`` with
``a_i = diag(p_i) - p_i p_i^T``: ``C (C+1) / 2`` weighted Gram matrices (DGEMM-bound).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.func import hessian as func_hessian
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.grads import (
    Loss,
    _as_eval_copy,
    folded_to_canonical,
    head_features,
    with_bias_column,
)
from interp.params import ParamSpec, fixed_tensors, flat_size, select_params


def softmax_curvature(logits: torch.Tensor) -> torch.Tensor:
    """``diag(p_i) - p_i p_i^T`` for every example: the Hessian of cross-entropy in the logits, ``(n, C, C)``."""
    p = torch.softmax(logits.to(torch.float64), dim=1)
    return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)


def kron_sum_hessian(z_tilde: torch.Tensor, a: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """``1/n sum_i a_i kron z~_i z~_i^T`` for symmetric ``a`` ``(n, K, K)`` and ``z~`` ``(n, E)``: ``(K E, K E)``.

    Computes the ``K (K+1) / 2`` distinct blocks as weighted Gram matrices and mirrors the rest.
    """
    n, k, e = len(z_tilde), a.shape[1], z_tilde.shape[1]
    z = z_tilde.to(torch.float64)
    h = torch.empty(k * e, k * e, dtype=torch.float64)
    pairs = [(c, d) for c in range(k) for d in range(c, k)]
    for c, d in tqdm(pairs, desc="Hessian blocks", disable=not progress):
        block = (z * a[:, c, d].unsqueeze(1)).T @ z
        block /= n
        h[c * e : (c + 1) * e, d * e : (d + 1) * e] = block
        if c != d:
            h[d * e : (d + 1) * e, c * e : (c + 1) * e] = block.T
    return h


def linear_head_hessian(z: torch.Tensor, logits: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """Closed-form Hessian of mean softmax cross-entropy over ``[W | b]`` (folded layout), ``(C(D+1), C(D+1))``."""
    return kron_sum_hessian(with_bias_column(z.to(torch.float64)), softmax_curvature(logits), progress=progress)


def available_bytes() -> int:
    """Physical memory available now (Linux ``MemAvailable``), or total memory elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_dense_fits(p: int, copies: float = 3.0, max_bytes: int | None = None) -> None:
    """Refuse a dense ``P x P`` float64 matrix (and ``copies`` working copies) that will not fit in memory."""
    need = copies * p * p * 8
    limit = max_bytes if max_bytes is not None else available_bytes()
    if need > limit:
        raise InterpError(
            f"a dense {p} x {p} float64 Hessian needs about {need / 2**30:.1f} GiB with its working copies, "
            f"more than the {limit / 2**30:.1f} GiB available; use the matrix-free path "
            "(interp.influence_matrix_cg, or --method cg) or fewer parameters (--params fc)"
        )


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
    """Hessian ``(P, P)`` of the MEAN loss over ``loader`` with respect to ``params``.

    ``H = d^2/d theta^2 [1/n sum_i loss(f(x_i; theta), y_i)]`` in the model's eval mode, flattened
    like :func:`interp.grads.per_example_grads` (``named_parameters`` order). ``loss_fn`` returns
    the mean over a batch. ``method="auto"`` uses the closed form when ``params`` is exactly one
    ``nn.Linear`` that produces the model's output under cross-entropy, else ``torch.func.hessian``
    batch by batch; ``"closed_form"`` or ``"func"`` force one. A matrix that will not fit in
    memory is refused before any work.
    """
    if method not in ("auto", "closed_form", "func"):
        raise InterpError(f"method must be auto, closed_form or func, got {method!r}")
    selected = select_params(model, params)
    p = flat_size(selected)
    check_dense_fits(p, max_bytes=max_bytes)
    head = find_linear(model, list(selected)) if loss_fn is F.cross_entropy else None
    if method == "closed_form" and head is None:
        raise InterpError("the closed form needs params to be exactly one nn.Linear under cross-entropy")
    if head is not None and method != "func":
        copy = _as_eval_copy(model, dtype, device)
        copy_head = find_linear(copy, list(selected))
        try:
            z, logits, _ = head_features(copy, copy_head, _cast(loader, dtype), progress=progress)
        except InterpError:
            if method == "closed_form":
                raise
        else:
            h = linear_head_hessian(z, logits, progress=progress)
            if copy_head.bias is None:  # drop the folded bias rows
                keep = torch.tensor([i for i in range(h.shape[0]) if (i + 1) % (z.shape[1] + 1) != 0])
                return h[keep][:, keep]
            perm = folded_to_canonical(logits.shape[1], z.shape[1])
            return h[perm][:, perm]
    return _func_hessian(model, loader, list(selected), loss_fn, dtype, device, progress)


def _cast(loader: Iterable, dtype: torch.dtype):
    for x, y in loader:
        yield x.to(dtype), y


def _func_hessian(model, loader, names, loss_fn, dtype, device, progress) -> torch.Tensor:
    model = _as_eval_copy(model, dtype, device)
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    fixed = fixed_tensors(model, names)
    theta = torch.cat([named[n].detach().flatten() for n in names])

    def batch_loss_sum(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)), strict=True))
        return loss_fn(functional_call(model, {**fixed, **parts}, (x,)), y) * len(y)

    h, n = torch.zeros(len(theta), len(theta), dtype=dtype, device=theta.device), 0
    for x, y in tqdm(loader, desc="Hessian (torch.func)", disable=not progress):
        x, y = x.to(theta.device, dtype), y.to(theta.device)
        h += func_hessian(batch_loss_sum)(theta, x, y)
        n += len(y)
    return h / n

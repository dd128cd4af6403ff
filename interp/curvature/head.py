"""Closed forms for a softmax linear head ``logits = W z + b``: gradients, Hessian, null space, influence.

Layout. These functions use the *folded* layout ``W~ = [W | b]`` of shape ``(C, D+1)`` flattened
row-major (index ``c (D+1) + d``; ``d = D`` is the bias), with ``z~ = [z; 1]``;
:func:`folded_to_canonical` maps it to ``named_parameters`` order (``weight.flatten()``, then ``bias``).

With ``p_i = softmax(W z_i + b)`` and ``a_i = diag(p_i) - p_i p_i^T``:

    g_i = (p_i - e_{y_i}) kron z~_i                        (per-example gradient)
    H   = 1/n sum_i a_i kron z~_i z~_i^T                    (Hessian of the mean loss)

Block ``(c, c')`` of ``H`` is ``Z~^T diag(a_{:, c, c'}) Z~ / n``: ``C (C+1) / 2`` weighted Gram
matrices (DGEMM-bound).

Null space, removed exactly before any factorisation:

* ``1_C kron u`` for every ``u`` (adding one vector to every class's weights changes no softmax):
  ``D + 1`` directions. Every gradient is orthogonal to them (``sum_c (p - e_y)_c = 0``), so
  :func:`head_influence` works in the coordinates ``(Q kron I)`` with ``Q`` an orthonormal basis
  of ``1_C^perp``.
* ``q kron e_d`` for every *dead* feature ``d``, one that is zero on every training image: its rows
  and columns of ``H`` are zero and so are the training gradients' entries. A test gradient's
  entries there meet only zeros (``H^+`` maps the null space to zero, and ``g_train`` has nothing
  there, damped or not), so dropping those features changes no influence value.

What remains, ``H_r = 1/n sum_i (Q^T a_i Q) kron z~'_i z~'_i^T`` over the live features ``z~'``, is
(generically) positive definite, so Cholesky applies and

    g_test^T (H + damping I)^+ g_train = g_test,r^T (H_r + damping I)^{-1} g_train,r

exactly, at ``(C-1)/C`` of the size (less for dead features).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from interp.curvature.memory import check_dense_fits
from interp.device import ieee_float32, resolve, synced_seconds, to_device
from interp.errors import InterpError, require_finite


def softmax_residuals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_i - e_{y_i}``, the gradient of cross-entropy with respect to the logits, ``(n, C)``."""
    return torch.softmax(logits, dim=1) - F.one_hot(y.to(logits.device), logits.shape[1]).to(logits.dtype)


def softmax_curvature(logits: torch.Tensor) -> torch.Tensor:
    """``diag(p_i) - p_i p_i^T`` for every example: the Hessian of cross-entropy in the logits, ``(n, C, C)``."""
    p = torch.softmax(logits.to(torch.float64), dim=1)
    return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)


def with_bias_column(z: torch.Tensor) -> torch.Tensor:
    """``[z, 1]``: features ``(n, D)`` with a column of ones for the folded bias, ``(n, D+1)``."""
    return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], dim=1)


def linear_head_grads(z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradients ``g_i = (p_i - e_{y_i}) kron [z_i; 1]``, folded layout, ``(n, C (D+1))``."""
    r = softmax_residuals(logits, y)
    return (r.unsqueeze(2) * with_bias_column(z).unsqueeze(1)).flatten(1)


def folded_to_canonical(num_classes: int, in_features: int) -> torch.Tensor:
    """Index ``perm`` with ``canonical = folded[perm]``: ``[W.flatten(), b]`` from ``[W | b]``."""
    c, d = num_classes, in_features
    weight = (torch.arange(c).unsqueeze(1) * (d + 1) + torch.arange(d)).flatten()
    bias = torch.arange(c) * (d + 1) + d
    return torch.cat([weight, bias])


def kron_sum_hessian(z_tilde: torch.Tensor, a: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """``1/n sum_i a_i kron z~_i z~_i^T`` for symmetric ``a`` ``(n, K, K)`` and ``z~`` ``(n, E)``: ``(K E, K E)``.

    Computes the ``K (K+1) / 2`` distinct blocks as weighted Gram matrices and mirrors the rest, on
    the device of ``z~``.
    """
    n, k, e = len(z_tilde), a.shape[1], z_tilde.shape[1]
    z = z_tilde.to(torch.float64)
    a = a.to(z.device)
    h = torch.empty(k * e, k * e, dtype=torch.float64, device=z.device)
    pairs = [(c, d) for c in range(k) for d in range(c, k)]
    for c, d in tqdm(pairs, desc="Hessian blocks", disable=not progress):
        block = (z * a[:, c, d].unsqueeze(1)).T @ z
        block /= n
        h[c * e : (c + 1) * e, d * e : (d + 1) * e] = block
        if c != d:
            h[d * e : (d + 1) * e, c * e : (c + 1) * e] = block.T
    return h


def linear_head_hessian(z: torch.Tensor, logits: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """Hessian of mean softmax cross-entropy over ``[W | b]`` (folded layout), ``(C(D+1), C(D+1))``."""
    return kron_sum_hessian(with_bias_column(z.to(torch.float64)), softmax_curvature(logits), progress=progress)


def class_contrast_basis(num_classes: int, device=None) -> torch.Tensor:
    """An orthonormal basis ``Q`` ``(C, C-1)`` of the vectors orthogonal to ``1_C``."""
    centred = torch.eye(num_classes, dtype=torch.float64, device=device) - 1.0 / num_classes
    q, _ = torch.linalg.qr(centred[:, : num_classes - 1])
    return q


def reduce_head_grads(z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(Q kron I)^T g_i`` for the head gradients ``g_i = (p_i - e_{y_i}) kron z~_i``: ``(n, (C-1)(D+1))``."""
    r = softmax_residuals(logits.to(torch.float64), y) @ q  # (n, C-1)
    return (r.unsqueeze(2) * with_bias_column(z.to(torch.float64)).unsqueeze(1)).flatten(1)


def reduced_head_hessian(
    z: torch.Tensor, logits: torch.Tensor, q: torch.Tensor, *, progress: bool = False
) -> torch.Tensor:
    """``H_r = 1/n sum_i (Q^T a_i Q) kron z~_i z~_i^T``, ``((C-1)(D+1), (C-1)(D+1))``."""
    a = q.T @ softmax_curvature(logits) @ q
    return kron_sum_hessian(with_bias_column(z.to(torch.float64)), a, progress=progress)


def live_features(z_train: torch.Tensor) -> torch.Tensor:
    """Mask ``(D,)`` of the features that are non-zero on at least one training image."""
    return (z_train != 0).any(dim=0)


def reduced_to_folded(h_r: torch.Tensor, q: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The full folded Hessian ``(C(D+1), C(D+1))`` from ``H_r`` over the live features: zeros elsewhere.

    ``H = (Q kron P) H_r (Q kron P)^T`` with ``P`` the embedding of the live features (and the bias).
    """
    c, d = q.shape[0], len(live)
    live = live.to(h_r.device)
    cols = torch.cat([torch.nonzero(live).flatten(), torch.tensor([d], device=h_r.device)])
    e = len(cols)
    h4 = torch.einsum("ak,kxly,bl->axby", q, h_r.view(c - 1, e, c - 1, e), q)
    part = torch.zeros(c, d + 1, c, e, dtype=h_r.dtype, device=h_r.device).index_copy_(1, cols, h4)
    full = torch.zeros(c, d + 1, c, d + 1, dtype=h_r.dtype, device=h_r.device).index_copy_(3, cols, part)
    return full.reshape(c * (d + 1), c * (d + 1))


@torch.no_grad()
@ieee_float32()
def head_features(
    model: nn.Module,
    head: nn.Linear,
    loader: Iterable,
    *,
    device=None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs ``z`` of ``head`` ``(n, D)``, the model's logits ``(n, C)`` and labels ``(n,)``.

    Batches run on ``device`` (default: the model's), cast to ``dtype`` when given (the model must
    be in that dtype); the results stay there. Checks that the
    model's output *is* the head's output (the head is the last operation), which the closed forms
    assume. The model is put in eval mode for the pass and its mode restored after.
    """
    device = resolve(model, device)
    captured = {}

    def hook(module, inputs, output):
        captured["z"], captured["out"] = inputs[0], output

    handle = head.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    zs, logits, ys = [], [], []
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress):
            out = model(to_device(x, y, device, dtype)[0])
            if captured.get("out") is not out:
                raise InterpError("the chosen linear layer is not the model's last operation; use the generic path")
            zs.append(captured["z"].detach().flatten(1))
            logits.append(out.detach())
            ys.append(y.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(zs), torch.cat(logits), torch.cat(ys)


@dataclass
class ReducedHead:
    """A softmax head's influence problem with its exact null space removed (see the module docstring).

    ``g_train`` ``(n_train, P_r)`` and ``g_test`` ``(n_test, P_r)`` are the reduced gradients,
    ``hessian`` is ``H_r`` ``(P_r, P_r)``, all float64 on one device; ``grad_norms`` are the norms of
    the full gradients (dead features included), ``||g_i|| = ||p_i - e_{y_i}|| ||z~_i||``.
    """

    g_train: torch.Tensor
    g_test: torch.Tensor
    hessian: torch.Tensor
    basis: torch.Tensor
    live: torch.Tensor
    grad_norms: tuple[torch.Tensor, torch.Tensor]
    removed: dict
    hessian_s: float


def reduce_head(
    z_train: torch.Tensor,
    logits_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    logits_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ReducedHead:
    """Reduced gradients and Hessian of a softmax head, on ``device`` (default: that of ``z_train``)."""

    for t, what in ((z_train, "the training features"), (logits_train, "the training logits"),
                    (z_test, "the test features"), (logits_test, "the test logits")):  # fmt: skip
        require_finite(t, what)
    dev = torch.device(device) if device is not None else z_train.device
    z_train, logits_train, y_train = (t.to(dev) for t in (z_train, logits_train, y_train))
    z_test, logits_test, y_test = (t.to(dev) for t in (z_test, logits_test, y_test))
    norms = tuple(
        torch.linalg.vector_norm(softmax_residuals(lg.to(torch.float64), y), dim=1)
        * torch.linalg.vector_norm(with_bias_column(z.to(torch.float64)), dim=1)
        for z, lg, y in ((z_test, logits_test, y_test), (z_train, logits_train, y_train))
    )
    c, d = logits_train.shape[1], z_train.shape[1]
    live = live_features(z_train)
    n_live = int(live.sum())
    if n_live < d:
        z_train, z_test = z_train[:, live], z_test[:, live]
    check_dense_fits((c - 1) * (n_live + 1), copies=2.5, device=dev)
    q = class_contrast_basis(c, device=dev)
    t = time.perf_counter()
    h_r = reduced_head_hessian(z_train, logits_train, q, progress=progress)
    hessian_s = synced_seconds(t, dev)
    dead = torch.nonzero(~live).flatten().tolist()
    removed = {
        "softmax_null_space": {
            "directions": d + 1,
            "why": "1_C kron u: adding one vector to every class's weights changes no softmax; every gradient is "
            "orthogonal to it",
        },
        "dead_features": {
            "count": len(dead),
            "indices": dead,
            "directions": (c - 1) * len(dead),
            "why": "features that are zero on every training image: their Hessian rows and training gradients are "
            "zero, so removing them changes no influence value",
        },
    }
    return ReducedHead(
        reduce_head_grads(z_train, logits_train, y_train, q),
        reduce_head_grads(z_test, logits_test, y_test, q),
        h_r,
        q,
        live,
        norms,
        removed,
        hessian_s,
    )

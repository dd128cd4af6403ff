"""Influence matrices (Koh & Liang's ``I_up,loss``), dense, blocked to disk, on a softmax head, and matrix-free.

Sign convention. Entry ``[i, j]`` is

    I[i, j] = - g_test_i^T (H + damping I)^+ g_train_j,

the first-order change in the loss on test point ``i`` when training point ``j`` is up-weighted
by an infinitesimal ``eps`` (``dL_test/d eps``), where ``H`` is the Hessian of the MEAN training
loss. Removing training point ``j`` (weight ``-1/n``) changes the test loss by about
``-I[i, j] / n``. Negative entries are *helpful* (up-weighting lowers the test loss); the most
helpful training image for test image ``i`` is ``argmin_j I[i, j]``.

The softmax head's Hessian is singular by construction: adding the same vector to every class's
weights (``1_C kron u``) leaves every softmax unchanged, so those ``D+1`` directions are exactly its
null space, and every gradient ``(p - e_y) kron z~`` is orthogonal to them (``sum(p - e_y) = 0``).
:func:`head_influence` therefore works in the reduced coordinates ``(Q kron I)`` with ``Q`` an
orthonormal basis of ``1_C^perp``, where the Hessian is (generically) positive definite:

    g_test^T H^+ g_train = (Q kron I)^T g_test . H_r^{-1} . (Q kron I)^T g_train,
    H_r = 1/n sum_i (Q^T a_i Q) kron z~_i z~_i^T,

exactly equal to the pseudo-inverse result, at (C-1)/C the size and with a Cholesky factor.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError, require_finite
from interp.grads import softmax_residuals, with_bias_column
from interp.hessian import check_dense_fits, kron_sum_hessian, softmax_curvature
from interp.inverse import PseudoInverse, pseudo_inverse


def _output(shape: tuple[int, int], out: str | Path | None):
    """A float64 tensor, or a ``.npy`` memory map at ``out`` once the disk is known to have room for it.

    A memory map is a sparse file: on a full disk the writes into it would kill the process with
    SIGBUS, so the space is checked first.
    """
    if out is None:
        return torch.empty(shape, dtype=torch.float64)
    need, free = shape[0] * shape[1] * 8, shutil.disk_usage(Path(out).parent).free
    if need > free:
        raise InterpError(
            f"{out} needs {need / 1e9:.2f} GB and {Path(out).parent} has {free / 1e9:.2f} GB free; "
            "free some space or write elsewhere"
        )
    return np.lib.format.open_memmap(str(out), mode="w+", dtype=np.float64, shape=shape)


def _blocked_product(left: torch.Tensor, right_t: torch.Tensor, out, block: int, progress: bool, desc: str):
    """``out = -(left @ right_t)`` in row blocks of ``block`` rows: ``left`` ``(m, P)``, ``right_t`` ``(P, n)``."""
    for start in tqdm(range(0, len(left), block), desc=desc, disable=not progress):
        rows = -(left[start : start + block].to(torch.float64) @ right_t)
        out[start : start + block] = rows if isinstance(out, torch.Tensor) else rows.numpy()
    if not isinstance(out, torch.Tensor):
        out.flush()
    return out


def influence_matrix(
    g_test: torch.Tensor,
    g_train: torch.Tensor,
    h: torch.Tensor | PseudoInverse,
    *,
    rcond: float | None = None,
    damping: float = 0.0,
    method: str = "eigh",
    block_size: int = 2048,
    out: str | Path | None = None,
    progress: bool = False,
):
    """``I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j``, shape ``(n_test, n_train)``.

    ``g_test`` ``(n_test, P)`` and ``g_train`` ``(n_train, P)`` are per-example gradients in the same
    layout as ``h`` ``(P, P)`` (or an already factorised :class:`PseudoInverse`). ``method`` is that of
    :func:`interp.inverse.pseudo_inverse` (default ``eigh``, a true pseudo-inverse with cut-off
    ``rcond * lambda_max``). Rows are computed ``block_size`` at a time; with ``out`` (a ``.npy``
    path) they stream to a memory-mapped file, so the matrix may exceed memory.
    Returns a float64 tensor, or the ``np.memmap`` when ``out`` is given.
    """
    require_finite(g_test, "the test gradients")
    require_finite(g_train, "the training gradients")
    inv = h if isinstance(h, PseudoInverse) else pseudo_inverse(h, rcond=rcond, damping=damping, method=method)
    if g_test.shape[1] != inv.size or g_train.shape[1] != inv.size:
        raise InterpError(f"gradients have {g_test.shape[1]} / {g_train.shape[1]} columns, the Hessian {inv.size}")
    solved = inv.apply(g_train.T.to(torch.float64))  # (P, n_train) = H^+ G_train^T
    return _blocked_product(
        g_test, solved, _output((len(g_test), len(g_train)), out), block_size, progress, "influence"
    )


def class_contrast_basis(num_classes: int) -> torch.Tensor:
    """An orthonormal basis ``Q`` ``(C, C-1)`` of the vectors orthogonal to ``1_C``."""
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
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


def head_influence(
    z_train: torch.Tensor,
    logits_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    logits_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    rcond: float | None = None,
    damping: float = 0.0,
    method: str = "auto",
    block_size: int = 2048,
    out_test: str | Path | None = None,
    out_train: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Both influence matrices of a softmax linear head, exactly, at the paper's scale.

    Inputs are the head's inputs ``z`` ``(n, D)``, the logits ``(n, C)`` and labels ``(n,)`` of the
    training set (which defines the Hessian of the mean training loss) and of the test set.
    Returns ``{"test": (n_test, n_train), "train": (n_train, n_train), "inverse": PseudoInverse,
    "hessian_reduced": H_r, "basis": Q, "timings": {...}}``; see the module docstring for the
    reduction, which is exact. ``method="auto"`` factorises ``H_r`` by Cholesky when it is
    positive definite and well conditioned for ``rcond``, else by eigh with the cut-off.
    """
    for t, what in ((z_train, "the training features"), (logits_train, "the training logits"),
                    (z_test, "the test features"), (logits_test, "the test logits")):  # fmt: skip
        require_finite(t, what)
    c = logits_train.shape[1]
    p_r = (c - 1) * (z_train.shape[1] + 1)
    check_dense_fits(p_r, copies=2.5)
    q = class_contrast_basis(c)
    timings = {}
    t = time.perf_counter()
    h_r = reduced_head_hessian(z_train, logits_train, q, progress=progress)
    timings["hessian_s"] = time.perf_counter() - t
    t = time.perf_counter()
    inv = pseudo_inverse(h_r, rcond=rcond, damping=damping, method=method)
    timings["factorise_s"] = time.perf_counter() - t
    t = time.perf_counter()
    g_train = reduce_head_grads(z_train, logits_train, y_train, q)
    solved = inv.apply(g_train.T)  # (P_r, n_train)
    timings["solve_s"] = time.perf_counter() - t
    t = time.perf_counter()
    g_test = reduce_head_grads(z_test, logits_test, y_test, q)
    test = _blocked_product(
        g_test, solved, _output((len(g_test), len(g_train)), out_test), block_size, progress, "influence test"
    )
    del g_test
    train = _blocked_product(
        g_train, solved, _output((len(g_train), len(g_train)), out_train), block_size, progress, "influence train"
    )
    timings["influence_s"] = time.perf_counter() - t
    return {"test": test, "train": train, "inverse": inv, "hessian_reduced": h_r, "basis": q, "timings": timings}


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, int]:
    """Solve ``(H + damping I) x = b`` for PSD ``H`` given by ``matvec``, column-wise, from ``x = 0``.

    ``b`` is ``(P, k)``; the ``k`` systems run together. Started from zero, the iterates stay in
    the Krylov space of ``b`` inside the range of ``H``, so for ``b`` in that range CG converges to
    the minimum-norm solution, ``H^+ b``, the pseudo-inverse answer. Returns ``(x, iterations,
    relative residual)``, the last being ``max_k ||b_k - (H + damping I) x_k|| / ||b_k||`` as tracked
    by the recursion; stops when every column's is below ``tol`` or after ``max_iter`` iterations.
    """
    if not 0 < tol < 1 or max_iter < 1 or not np.isfinite(damping) or damping < 0:
        raise InterpError(
            f"CG needs 0 < tol < 1, max_iter >= 1 and finite damping >= 0; got {tol}, {max_iter}, {damping}"
        )
    require_finite(b, "the right-hand sides of the CG solve")
    b = b.to(torch.float64)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    norms = (b * b).sum(0).clamp_min(1e-300)
    target = tol**2 * norms
    for it in range(1, max_iter + 1):
        active = rs > target  # converged columns stop moving
        hp = matvec(p) + damping * p
        require_finite(hp, "a Hessian-vector product")
        alpha = torch.where(active, rs / (p * hp).sum(0).clamp_min(1e-300), torch.zeros_like(rs))
        x += alpha * p
        r -= alpha * hp
        rs_new = (r * r).sum(0)
        if bool((rs_new <= target).all()):
            return x, it, float((rs_new / norms).sqrt().max())
        p = r + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return x, max_iter, float((rs / norms).sqrt().max())


def hessian_vector_product(
    model: torch.nn.Module,
    loader,
    params=None,
    *,
    loss_fn=None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``v -> H v`` for the Hessian of the MEAN loss over ``loader``, without forming ``H``.

    Forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), vectorised over the columns
    of ``v`` ``(P, k)``. The batches of ``loader`` are held in memory. Returns ``(matvec, P)``.
    """
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp, vmap

    from interp.grads import _as_eval_copy
    from interp.params import fixed_tensors, select_params

    loss_fn = loss_fn or F.cross_entropy
    names = list(select_params(model, params))
    model = _as_eval_copy(model, dtype, None)
    named = dict(model.named_parameters())
    fixed = fixed_tensors(model, names)
    theta = {k: named[k].detach() for k in names}
    sizes = [theta[k].numel() for k in names]
    batches = [(x.to(dtype), y) for x, y in loader]
    n = sum(len(y) for _, y in batches)

    def total_loss(th):
        return sum(loss_fn(functional_call(model, {**fixed, **th}, (x,)), y) * len(y) for x, y in batches) / n

    def hvp_one(v_flat):
        v = {k: t.view(theta[k].shape) for k, t in zip(names, v_flat.split(sizes), strict=True)}
        _, hv = jvp(grad(total_loss), (theta,), (v,))
        return torch.cat([hv[k].flatten() for k in names])

    batched = vmap(hvp_one, in_dims=1, out_dims=1)
    return (lambda v: batched(v.to(dtype))), sum(sizes)


def influence_matrix_cg(
    g_test: torch.Tensor,
    g_train: torch.Tensor,
    matvec: Callable[[torch.Tensor], torch.Tensor],
    *,
    damping: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
    chunk: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Matrix-free ``I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j`` by conjugate gradient.

    Solves for ``chunk`` training gradients at a time with Hessian-vector products ``matvec``
    (see :func:`hessian_vector_product`); for parameter sets whose ``P x P`` Hessian does not fit.
    Returns the ``(n_test, n_train)`` matrix and ``{"max_iterations", "tol", "max_iter",
    "max_relative_residual", "converged"}``. A solve that stops at ``max_iter`` above ``tol`` is
    reported there and with a :class:`UserWarning` naming the residual reached.
    """
    require_finite(g_test, "the test gradients")
    out = torch.empty(len(g_test), len(g_train), dtype=torch.float64)
    worst, residual = 0, 0.0
    for start in tqdm(range(0, len(g_train), chunk), desc="CG solves", disable=not progress):
        x, iters, res = conjugate_gradient(
            matvec, g_train[start : start + chunk].T, damping=damping, tol=tol, max_iter=max_iter
        )
        out[:, start : start + chunk] = -(g_test.to(torch.float64) @ x)
        worst, residual = max(worst, iters), max(residual, res)
    converged = residual <= tol
    if not converged:
        warnings.warn(
            f"CG did not converge: relative residual {residual:.3g} after {max_iter} iterations (tol {tol:g}); "
            "the influence values are approximate: raise the iteration limit, add damping or use a dense method",
            stacklevel=2,
        )
    info = {"max_iterations": worst, "tol": tol, "max_iter": max_iter, "max_relative_residual": residual}
    return out, info | {"converged": converged}

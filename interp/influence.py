"""Influence matrices (Koh & Liang's ``I_up,loss``): dense, blocked to disk, streamed, and on a softmax head.

Sign convention. Entry ``[i, j]`` is

    I[i, j] = - g_test_i^T (H + damping I)^+ g_train_j,

the first-order change in the loss on test point ``i`` when training point ``j`` is up-weighted
by an infinitesimal ``eps`` (``dL_test/d eps``), where ``H`` is the Hessian of the MEAN training
loss. Removing training point ``j`` (weight ``-1/n``) changes the test loss by about
``-I[i, j] / n``. Negative entries are *helpful* (up-weighting lowers the test loss); the most
helpful training image for test image ``i`` is ``argmin_j I[i, j]``.

The closed forms of a softmax head, with its exact null space removed, are in :mod:`interp.curvature.head`, and
:func:`head_influence` computes both matrices from them; the inverses are :mod:`interp.inverses`' operators.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.curvature.head import reduce_head
from interp.device import synced_seconds, to_numpy
from interp.errors import InterpError, require_finite, require_tensor
from interp.inverses.base import InverseOperator
from interp.inverses.dense import pseudo_inverse


def check_gradients(g_test, g_train) -> None:
    """Per-example gradients as :func:`influence_matrix` needs them: 2-D ``(n, P)`` float32/float64
    tensors of equal width with finite entries; an :class:`InterpError` naming the argument otherwise."""
    for name, g in (("g_test", g_test), ("g_train", g_train)):
        require_tensor(g, name, ndim=2)
        require_finite(g, f"the {'test' if name == 'g_test' else 'training'} gradients ({name})")
    if g_test.shape[1] != g_train.shape[1]:
        raise InterpError(f"g_test has {g_test.shape[1]} columns and g_train {g_train.shape[1]}; they must match")


def output_array(shape: tuple[int, int], out: str | Path | None):
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


def blocked_product(
    left: torch.Tensor,
    right_t: torch.Tensor,
    out,
    block: int,
    progress: bool,
    desc: str,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
):
    """``out = -diag(row_scale) (left @ right_t) diag(col_scale)`` in row blocks of ``block`` rows.

    ``left`` ``(m, P)``, ``right_t`` ``(P, n)``; each block is computed on ``right_t``'s device and
    copied to ``out`` (a CPU tensor or a memmap).
    """
    dev = right_t.device
    col = col_scale.to(dev, torch.float64).unsqueeze(0) if col_scale is not None else None
    for start in tqdm(range(0, len(left), block), desc=desc, disable=not progress):
        rows = -(left[start : start + block].to(dev, torch.float64) @ right_t)
        if row_scale is not None:
            rows *= row_scale[start : start + block].to(dev, torch.float64).unsqueeze(1)
        if col is not None:
            rows *= col
        out[start : start + block] = rows.cpu() if isinstance(out, torch.Tensor) else to_numpy(rows)
    if not isinstance(out, torch.Tensor):
        out.flush()
    return out


NORMALIZE = ("none", "relatif", "cosine")
NORMALIZE_HELP = {
    "none": "I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j",
    "relatif": "RelatIF (Barshan et al. 2020): I[i, j] / ||(H + damping I)^+ g_train_j||",
    "cosine": "-cos(g_test_i, g_train_j): gradient similarity, no Hessian",
}


def _inverse_norms(norms: torch.Tensor) -> torch.Tensor:
    """``1 / norms``, with 0 where a norm is 0 (a zero gradient influences nothing)."""
    return torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))


def _normalised_right(g_test, g_train, inv, normalize: str, grad_norms):
    """``(right, row scale of test rows, row scale of train rows, column scale)`` for :func:`blocked_product`:
    ``right = (H + damping I)^+ G_train^T`` (or ``G_train^T`` for ``cosine``) and the norms that normalise."""
    if normalize not in NORMALIZE:
        raise InterpError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if normalize == "cosine":
        right = g_train.T.to(inv.device if inv is not None else g_train.device, torch.float64)
        n_test, n_train = grad_norms or (torch.linalg.vector_norm(g_test.to(torch.float64), dim=1),
                                         torch.linalg.vector_norm(right, dim=0))  # fmt: skip
        return right, _inverse_norms(n_test), _inverse_norms(n_train), _inverse_norms(n_train)
    if inv is None:
        raise InterpError(f"normalize={normalize!r} needs an inverse")
    right = inv.apply(g_train.T)  # (P, n_train) = H^+ G_train^T, on the operator's device
    col = _inverse_norms(torch.linalg.vector_norm(right, dim=0)) if normalize == "relatif" else None
    return right, None, None, col


def influence_pair(
    g_test: torch.Tensor,
    g_train: torch.Tensor,
    inv: InverseOperator | None,
    *,
    normalize: str = "none",
    grad_norms: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_size: int = 2048,
    out_test: str | Path | None = None,
    out_train: str | Path | None = None,
    progress: bool = False,
) -> tuple:
    """Test x train and train x train matrices for one inverse, in one of :data:`NORMALIZE`'s forms.

    Signs follow the module's convention everywhere (negative = helpful):

    * ``none``: ``I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j``;
    * ``relatif``: ``I[i, j] / ||(H + damping I)^+ g_train_j||`` (Barshan et al., 2020: the training
      point's own inverse-Hessian-weighted gradient norm, so that a few training images with large
      gradients do not top every list);
    * ``cosine``: ``-g_test_i^T g_train_j / (||g_test_i|| ||g_train_j||)`` (``inv`` is not used).

    ``grad_norms`` ``(||g_test_i||, ||g_train_j||)`` replace the norms of the given rows where those
    are reduced coordinates (the softmax head with dead features: see :mod:`interp.curvature.head`).
    Returns ``(test, train)``: CPU float64 tensors, or memmaps where ``out_*`` paths are given.
    """
    check_gradients(g_test, g_train)
    right, row_test, row_train, col = _normalised_right(g_test, g_train, inv, normalize, grad_norms)
    test = blocked_product(g_test, right, output_array((len(g_test), len(g_train)), out_test), block_size, progress,
                           "influence test", row_test, col)  # fmt: skip
    train = blocked_product(g_train, right, output_array((len(g_train), len(g_train)), out_train), block_size,
                            progress, "influence train", row_train, col)  # fmt: skip
    return test, train


def influence_matrix(
    g_test: torch.Tensor,
    g_train: torch.Tensor,
    h: torch.Tensor | InverseOperator,
    *,
    rcond: float | str | None = None,
    damping: float = 0.0,
    method: str = "eigh",
    normalize: str = "none",
    block_size: int = 2048,
    out: str | Path | None = None,
    progress: bool = False,
):
    """``I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j``, shape ``(n_test, n_train)``.

    ``g_test`` ``(n_test, P)`` and ``g_train`` ``(n_train, P)`` are per-example gradients in the same
    layout as ``h``: a dense ``(P, P)`` Hessian, factorised here by
    :func:`interp.inverses.dense.pseudo_inverse` with ``rcond``, ``damping`` and ``method`` (default ``eigh``,
    a true pseudo-inverse with cut-off ``rcond * lambda_max``), or any :class:`InverseOperator`
    (Cholesky, spectral, conjugate gradient, ...), whose own settings then apply. ``normalize``:
    ``none``, ``relatif`` or ``cosine`` (see :func:`influence_pair`). The solves run on the
    operator's device; rows are computed ``block_size`` at a time and gathered on the CPU, or with
    ``out`` (a ``.npy`` path) streamed to a memory-mapped file, so the matrix may exceed memory.
    Returns a float64 CPU tensor, or the ``np.memmap`` when ``out`` is given.

    Raises :class:`InterpError`, naming the argument, for inputs that would give a wrong matrix
    silently: gradients that are not 2-D float32/float64 tensors or hold NaN/Inf, gradient widths
    that differ from ``H``'s, and an ``H`` that is not square, symmetric (to round-off) and finite
    or that has no positive eigenvalue (see :func:`interp.inverses.dense.pseudo_inverse`).
    """
    check_gradients(g_test, g_train)
    if normalize not in NORMALIZE:
        raise InterpError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    inv = h if isinstance(h, InverseOperator) else pseudo_inverse(h, rcond=rcond, damping=damping, method=method)
    if g_test.shape[1] != inv.size or g_train.shape[1] != inv.size:
        raise InterpError(
            f"g_test and g_train have {g_test.shape[1]} / {g_train.shape[1]} columns, the Hessian {inv.size}: "
            "the gradients and H must cover the same parameters in the same order"
        )
    right, row, _, col = _normalised_right(g_test, g_train, inv, normalize, None)
    return blocked_product(
        g_test, right, output_array((len(g_test), len(g_train)), out), block_size, progress, "influence", row, col
    )


def head_influence(
    z_train: torch.Tensor,
    logits_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    logits_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    rcond: float | str | None = None,
    damping: float = 0.0,
    method: str = "auto",
    normalize: str = "none",
    block_size: int = 2048,
    out_test: str | Path | None = None,
    out_train: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict:
    """Both influence matrices of a softmax linear head, exactly, at the paper's scale.

    Inputs are the head's inputs ``z`` ``(n, D)``, the logits ``(n, C)`` and labels ``(n,)`` of the
    training set (which defines the Hessian of the mean training loss) and of the test set. The
    Hessian, its factorisation and the solves run on ``device`` (default: that of ``z_train``), in
    float64; the matrices are returned on the CPU (or streamed to the ``.npy`` paths).
    ``normalize`` is ``none``, ``relatif`` or ``cosine`` (:func:`influence_pair`).
    Returns ``{"test": (n_test, n_train), "train": (n_train, n_train), "inverse": InverseOperator,
    "hessian_reduced": H_r, "basis": Q, "live": (D,) mask, "removed": {...}, "reduced": ReducedHead,
    "timings": {...}}``; see :mod:`interp.curvature.head` for the reductions, which are exact.
    ``method="auto"`` factorises ``H_r`` by Cholesky when it is positive definite and well
    conditioned for ``rcond``, else by eigh with the cut-off.
    """
    red = reduce_head(z_train, logits_train, y_train, z_test, logits_test, y_test, device=device, progress=progress)
    dev = red.hessian.device
    timings = {"hessian_s": red.hessian_s}
    t = time.perf_counter()
    inv = pseudo_inverse(red.hessian, rcond=rcond, damping=damping, method=method)
    timings["factorise_s"] = synced_seconds(t, dev)
    t = time.perf_counter()
    test, train = influence_pair(
        red.g_test,
        red.g_train,
        inv,
        normalize=normalize,
        grad_norms=red.grad_norms,
        block_size=block_size,
        out_test=out_test,
        out_train=out_train,
        progress=progress,
    )
    timings["influence_s"] = synced_seconds(t, dev)
    return {
        "test": test,
        "train": train,
        "inverse": inv,
        "hessian_reduced": red.hessian,
        "basis": red.basis,
        "live": red.live,
        "removed": red.removed,
        "reduced": red,
        "timings": timings,
    }


def streamed_influence(
    inv: InverseOperator,
    row_batches: Callable[[], Iterable[torch.Tensor]],
    col_batches: Callable[[], Iterable[torch.Tensor]],
    shape: tuple[int, int],
    *,
    budget_bytes: int,
    out: str | Path | None = None,
    progress: bool = False,
    desc: str = "influence (streamed)",
    normalize: str = "none",
    on_rows: Callable[[torch.Tensor], None] | None = None,
):
    """``I = -G_rows (H + damping I)^+ G_cols^T`` without holding either gradient matrix whole.

    ``row_batches()`` and ``col_batches()`` each start a new pass over per-example gradients, ``(b, P)`` a batch,
    in the matrix's row and column order (e.g. :func:`interp.curvature.grads.per_example_grad_batches`). Rows are gathered
    in chunks of ``m`` whose solve ``(H + damping I)^+ G_chunk^T`` (``P x m``, float64, twice with the chunk)
    fits in ``budget_bytes``; each chunk is solved once and the column gradients are streamed past it, so the
    column gradients are computed once per chunk. Returns ``(matrix, passes over the columns)``; the matrix is a
    CPU float64 tensor, or a ``.npy`` memmap at ``out``. The inverse is symmetric, so which side is solved does
    not change the result.

    ``normalize`` as in :func:`influence_pair`: ``relatif`` divides column ``j`` by ``||(H + damping I)^+
    g_col_j||``, found in one more pass over the columns (each batch solved once; counted in the passes);
    ``cosine`` is ``-cos(g_row_i, g_col_j)`` and does not use ``inv``. ``on_rows(g)``, when given, sees every row
    gradient once, in chunks ``(m, P)`` (float64, on the operator's device): for sums over them taken on the way,
    such as the share of their norm an inverse drops.
    """
    if budget_bytes <= 0:
        raise InterpError(f"budget_bytes must be positive, got {budget_bytes}")
    if normalize not in NORMALIZE:
        raise InterpError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    result = output_array(shape, out)
    m = max(1, int(budget_bytes // (2 * 8 * inv.size)))
    passes, done = 0, 0
    col_scale = None
    if normalize == "relatif":  # 1 / ||(H + damping I)^+ g_col_j||, one solve per column batch
        col_scale = torch.cat([_inverse_norms(torch.linalg.vector_norm(inv.apply(gb.to(inv.device, torch.float64).T),
                                                                       dim=0)).cpu() for gb in col_batches()])  # fmt: skip
        passes += 1

    def unit_rows(g: torch.Tensor) -> torch.Tensor:
        return g * _inverse_norms(torch.linalg.vector_norm(g, dim=1)).unsqueeze(1)

    def solve_and_stream(chunk: list[torch.Tensor]) -> None:
        nonlocal passes, done
        g = torch.cat(chunk).to(inv.device, torch.float64)
        require_finite(g, "the row gradients")
        if on_rows is not None:
            on_rows(g)
        right = unit_rows(g).T if normalize == "cosine" else inv.apply(g.T)  # (P, m)
        col = 0
        for gb in col_batches():
            gb = gb.to(right.device, torch.float64)
            block = -((unit_rows(gb) if normalize == "cosine" else gb) @ right).T  # (m, b)
            if col_scale is not None:
                block = block * col_scale[col : col + gb.shape[0]].to(block.device)
            rows = block.cpu() if isinstance(result, torch.Tensor) else to_numpy(block)
            result[done : done + len(g), col : col + gb.shape[0]] = rows
            col += gb.shape[0]
        if col != shape[1]:
            raise InterpError(f"the column gradients had {col} rows, the matrix {shape[1]} columns")
        passes += 1
        done += len(g)

    chunk, held = [], 0
    for gb in tqdm(row_batches(), desc=desc, disable=not progress):
        while len(gb):
            take = gb[: m - held]
            chunk.append(take.detach())
            held += len(take)
            gb = gb[len(take) :]
            if held == m:
                solve_and_stream(chunk)
                chunk, held = [], 0
    if chunk:
        solve_and_stream(chunk)
    if done != shape[0]:
        raise InterpError(f"the row gradients had {done} rows, the matrix {shape[0]}")
    if not isinstance(result, torch.Tensor):
        result.flush()
    return result, passes


def __getattr__(name: str):
    """``hessian_vector_product`` lived here before ``interp`` had rooms: it is :mod:`interp.curvature`'s now."""
    if name == "hessian_vector_product":
        import warnings

        from interp.curvature.hessian import hessian_vector_product

        warnings.warn("interp.influence.hessian_vector_product moved to interp.curvature (interp.hessian_vector_product "
                      "too)", DeprecationWarning, stacklevel=2)  # fmt: skip
        return hessian_vector_product
    raise AttributeError(f"module 'interp.influence' has no attribute {name!r}")

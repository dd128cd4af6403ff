"""Influence in the top-``r`` eigenspace of the curvature, from matrix-vector products (Schioppa et al. 2022).

With ``G v`` products (the exact GGN's, or the Hessian's), Lanczos (ARPACK through ``scipy eigsh``; for a
symmetric matrix Arnoldi's iteration is Lanczos', started from a fixed seeded vector so that a run repeats)
finds the ``r`` largest eigenpairs ``G ~ V diag(w) V^T``, and

    (G + damping I)^+ ~ V diag(1 / (w + damping))_kept V^T,

every direction outside the subspace dropped, and inside it every direction whose ``w + damping`` is at or
under the cut-off ``rcond * max(w + damping)`` (default ``exact``, ``P * eps``, as the dense pseudo-inverse:
without it, asking for more eigenpairs than the numerical rank of ``G`` would invert round-off eigenvalues of
1e-19 and below).

``info()`` reports ``r``, the eigenvalues kept and the share of ``trace(G)`` they capture: the trace of what
the ``r`` eigenpairs leave out, ``trace((I - V V^T) G (I - V V^T))``, is estimated by Hutchinson's method on
that deflated operator, with its standard error (estimating the whole trace instead would let the estimate's
noise dominate the share). The subspace is the whole space at ``r = P`` only; where ARPACK's Krylov basis
(``2 r + 1`` vectors) would span the whole space anyway (``2 r + 1 >= P``) and the dense matrix fits, it is
assembled from ``P`` products (in blocks) and decomposed densely instead, which is cheaper there and exact.

Where the products come through a cached factor ``G = F^T F`` (``F`` ``(m, P)``, ``m = n C`` rows fewer than
``P``: :func:`interp.curvature.ggn_products` caches it when it fits), ``G``'s nonzero eigenpairs are those of the
``m x m`` Gram matrix ``F F^T = U diag(s) U^T`` with ``V = F^T U diag(s)^-1/2``, as in the Woodbury inverse; the
top ``r`` are then taken from it exactly, not by Lanczos, and the trace left out is exact too (``trace(F F^T)`` minus
the ``r`` found). The same eigenpairs as Lanczos converged (tests); on the demo's 1-block runs (``4,000 x 74,634``)
it replaces 418 products that each read the whole factor (84 s, on one core or two: memory-bound) by one Gram
matrix and a partial eigendecomposition (34 s on one core, 20 s on two: ``benchmarks/arnoldi_gram.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from interp.curvature.ggn import ggn_products
from interp.curvature.hessian import hessian_vector_product
from interp.curvature.memory import check_dense_fits
from interp.device import to_numpy
from interp.errors import InterpError
from interp.inverses.base import INVERSES, Curvature, InverseMethod, check_damping, resolve_rcond
from interp.inverses.eigen import EigenbasisInverse, arpack_start, symmetric_eigh
from interp.inverses.lowrank import gram_eigenpairs

HUTCHINSON_PROBES = 16
ARNOLDI_RANK = 200  # the default r: on the tests' 2,954-parameter selection it reaches top-10 overlap ~0.73


@dataclass(eq=False)
class ArnoldiInverse(EigenbasisInverse):
    """``V diag(1 / (w + damping)) V^T`` over the leading eigenpairs ``(w, V)`` whose ``|w + damping|`` is above
    ``rcond * max |w + damping|`` (see the module's docstring)."""

    eigenvalues: torch.Tensor  # (r,), descending
    eigenvectors: torch.Tensor  # (P, r)
    damping: float
    curvature: str
    rcond: float | str | None = "exact"
    trace_rest: tuple[float, float] | None = None  # Hutchinson estimate of the trace left out, and its standard error
    products: int = 0
    solver: str = "Lanczos (scipy eigsh)"
    asked: int | None = None  # the eigenpairs asked for, where fewer came back (G has fewer nonzero ones)
    method: str = field(default="arnoldi", init=False)

    def __post_init__(self):
        check_damping(self.damping)
        self.rcond = resolve_rcond(self.rcond, self.size)

    def with_settings(self, *, rcond="same", damping: float | None = None) -> ArnoldiInverse:
        """The same eigenpairs under another cut-off and/or damping: no new products."""
        return ArnoldiInverse(self.eigenvalues, self.eigenvectors, self.damping if damping is None else damping,
                              self.curvature, self.rcond if rcond == "same" else rcond, self.trace_rest,
                              self.products, self.solver, self.asked)  # fmt: skip

    def _trace_share(self) -> tuple[float, float | None, float | None]:
        """``(trace found, captured share, its standard error)`` (the delta method on found / (found + rest))."""
        w = self._eigenvalues_numpy()
        found = float(w[w > 0].sum())
        if self.trace_rest is None:
            return found, None, None
        rest, se = self.trace_rest
        total = found + max(rest, 0.0)
        return (found, found / total, found * se / total**2) if total > 0 else (found, None, None)

    def info(self) -> dict:
        w = self._eigenvalues_numpy()
        found, share, share_se = self._trace_share()
        rest, rest_se = self.trace_rest if self.trace_rest is not None else (None, None)
        return {
            "method": "arnoldi",
            "curvature": self.curvature,
            **self._kept_facts(),
            "rank_asked": int(self.asked if self.asked is not None else len(w)),
            "eigenpairs_found": int(len(w)),
            "dropped_in_subspace": int(len(w)) - self.rank,
            "largest_eigenvalue": float(w.max()) if len(w) else 0.0,
            "trace_found": found,
            "trace_rest_estimate": rest,
            "trace_rest_standard_error": rest_se,
            "captured_trace_share": share,
            "captured_trace_share_standard_error": share_se,
            "products": self.products,
            "solver": self.solver,
        }

    def report(self) -> list[str]:
        _, share, se = self._trace_share()
        trace = f", {share:.1%} (standard error {se:.1%}) of the trace" if share is not None else ""
        found = len(self.eigenvalues)
        short = f" ({self.asked} asked: G has no more nonzero ones)" if self.asked not in (None, found) else ""
        return [f"curvature: {self.curvature}",
                f"arnoldi: {found} eigenpairs{short} of {self.size} by {self.solver}{trace}"]  # fmt: skip


def deflated_trace(matvec: Callable[[torch.Tensor], torch.Tensor], basis: torch.Tensor, device,
                   probes: int = HUTCHINSON_PROBES, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """``trace((I - V V^T) G (I - V V^T))`` for orthonormal ``V`` ``(P, r)``: Hutchinson's estimate over
    Rademacher ``z_k`` projected off ``V``, ``mean_k z_k'^T G z_k'``, and its standard error (sample standard
    deviation over the ``probes`` / sqrt(probes)). 0 with no error when ``V`` spans the whole space."""
    size, r = basis.shape
    if r >= size:
        return 0.0, 0.0
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randint(0, 2, (size, probes), generator=gen, dtype=torch.float64) * 2 - 1).to(device)
    v = basis.to(device, torch.float64)
    z = z - v @ (v.T @ z)
    samples = to_numpy((z * matvec(z).to(torch.float64)).sum(0))
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes))


def lanczos_spans_everything(rank: int, size: int) -> bool:
    """Whether ARPACK's Krylov basis for ``rank`` eigenpairs (``2 rank + 1`` vectors) would be the whole space."""
    return 2 * rank + 1 >= size


def arnoldi_inverse(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    *,
    rank: int,
    damping: float = 0.0,
    rcond: float | str | None = "exact",
    curvature: str = "ggn",
    device: torch.device | str = "cpu",
    tol: float = 1e-8,
    chunk: int = 64,
    factor: torch.Tensor | None = None,
    trace: bool = True,
) -> ArnoldiInverse:
    """The top-``rank`` eigenpairs of the symmetric operator ``matvec`` (``(P, k) -> (P, k)``) and their
    damped inverse above the cut-off ``rcond`` (see the module's docstring). ``factor``: ``F`` ``(m, P)`` with
    ``matvec(v) = F^T F v``, where the products have one; with ``rank < m < P`` the eigenpairs come from its Gram
    matrix. ``trace=False`` skips the Lanczos path's Hutchinson estimate of the trace left out (``HUTCHINSON_PROBES``
    more products; the captured share is then not reported): for callers that use the eigenpairs alone."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InterpError(f"rank must be an integer >= 1, got {rank!r}")
    check_damping(damping)
    rank = min(rank, size)
    dev = torch.device(device)
    if factor is not None and rank < factor.shape[0] < size:
        return _from_gram(factor.to(dev, torch.float64), rank, damping, rcond, curvature)
    dense = rank >= size - 1  # eigsh needs rank < size - 1 for its basis
    if not dense and lanczos_spans_everything(rank, size):
        try:
            check_dense_fits(size, device=dev, what=f"the assembled {size} x {size} curvature")
            dense = True
        except InterpError:
            pass  # too large to assemble: Lanczos, however many products it takes
    if dense:
        check_dense_fits(size, device=dev, what=f"the assembled {size} x {size} curvature")
        eye = torch.eye(size, dtype=torch.float64, device=dev)
        mat = torch.cat([matvec(eye[:, s : s + chunk]).to(torch.float64) for s in range(0, size, chunk)], dim=1)
        w, v = symmetric_eigh((mat + mat.T) / 2, top=rank)
        w, v = w.flip(0), v.flip(1)
        rest = (float(torch.diagonal(mat).sum()) - float(w[w > 0].sum()), 0.0) if rank < size else (0.0, 0.0)
        why = "r = P" if rank == size else "Lanczos' basis of 2r + 1 vectors would span the whole space"
        return ArnoldiInverse(w, v, damping, curvature, rcond, rest, size,
                              f"dense eigh of the matrix assembled from P products ({why})")  # fmt: skip
    from scipy.sparse.linalg import LinearOperator, eigsh

    products = 0

    def mv(x):
        nonlocal products
        products += 1
        col = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(size, -1)).to(dev)
        return to_numpy(matvec(col).to(torch.float64)).reshape(x.shape)

    op = LinearOperator((size, size), matvec=mv, dtype=np.float64)
    ncv = min(size, max(2 * rank + 1, rank + 32))
    w, v = eigsh(op, k=rank, which="LA", tol=tol, ncv=ncv, v0=arpack_start(size))
    order = np.argsort(w)[::-1].copy()
    w, v = torch.from_numpy(w[order]).to(dev), torch.from_numpy(v[:, order]).to(dev)
    if not trace:
        return ArnoldiInverse(w, v, damping, curvature, rcond, None, products)
    rest = deflated_trace(matvec, v, dev)
    return ArnoldiInverse(w, v, damping, curvature, rcond, rest, products + HUTCHINSON_PROBES)


def _from_gram(factor: torch.Tensor, rank: int, damping: float, rcond, curvature: str) -> ArnoldiInverse:
    """The top-``rank`` eigenpairs of ``F^T F`` from the Gram matrix ``F F^T`` (see the module's docstring and
    :func:`interp.inverses.lowrank.gram_eigenpairs`: fewer than ``rank`` come back where ``G`` has fewer nonzero
    ones). ``V`` is formed here: ``r`` columns, cheaper to multiply by than the ``m`` rows of ``F``."""
    m, size = factor.shape
    check_dense_fits(m, device=factor.device, what=f"the {m} x {m} Gram matrix of the factor")
    s, u, trace = gram_eigenpairs(factor, top=rank)
    v = factor.T @ (u / s.sqrt())
    rest = trace - float(s.sum())
    solver = (f"dense eigh of the {m} x {m} Gram matrix of the cached factor (G = F^T F: its nonzero eigenpairs, "
              f"the top {rank} exactly)")  # fmt: skip
    return ArnoldiInverse(s, v, damping, curvature, rcond, (max(rest, 0.0), 0.0), 0, solver, rank)


@dataclass(frozen=True)
class ArnoldiOptions:
    """The settings of ``--method arnoldi``."""

    arnoldi_rank: int = field(default=ARNOLDI_RANK, metadata={"help": "eigenpairs of the curvature computed (the "
                                                                      "subspace's dimension)"})  # fmt: skip
    arnoldi_curvature: str = field(default="ggn", metadata={"help": "the curvature whose top eigenpairs are taken: ggn "
                                                                     "(the exact GGN's products) or hessian"})  # fmt: skip

    def __post_init__(self):
        if isinstance(self.arnoldi_rank, bool) or not isinstance(self.arnoldi_rank, int) or self.arnoldi_rank < 1:
            raise InterpError(f"arnoldi_rank must be an integer >= 1, got {self.arnoldi_rank!r}")
        if self.arnoldi_curvature not in ("ggn", "hessian"):
            raise InterpError(f"arnoldi_curvature must be ggn or hessian, got {self.arnoldi_curvature!r}")


def _arnoldi(curvature: Curvature, *, rcond, damping: float, progress: bool, arnoldi_rank: int,
             arnoldi_curvature: str) -> ArnoldiInverse:  # fmt: skip
    model, data, names = curvature.model, curvature.data, curvature.names()
    if arnoldi_curvature == "ggn":
        products = ggn_products(model, data, names, device=curvature.device)
    else:
        products = hessian_vector_product(model, data, names, device=curvature.device)
    return arnoldi_inverse(products, products.size, rank=arnoldi_rank, damping=damping, rcond=rcond,
                           curvature=f"{arnoldi_curvature}: {products.description}", device=curvature.device,
                           factor=products.factor)  # fmt: skip


INVERSES.register(InverseMethod("arnoldi", _arnoldi, needs="model", shared="arnoldi", default_rcond="exact",
                                options=ArnoldiOptions,
                                help="the top --arnoldi-rank eigenpairs of the GGN from products (Lanczos), inverted "
                                "in that subspace above the cut-off"))  # fmt: skip

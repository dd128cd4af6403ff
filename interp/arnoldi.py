"""Influence in the top-``r`` eigenspace of the curvature, from matrix-vector products (Schioppa et al. 2022).

With ``G v`` products (the exact GGN's, or the Hessian's), Lanczos (ARPACK through ``scipy eigsh``; for a
symmetric matrix Arnoldi's iteration is Lanczos') finds the ``r`` largest eigenpairs ``G ~ V diag(w) V^T``,
and

    (G + damping I)^+ ~ V diag(1 / (w + damping)) V^T,

every direction outside the subspace dropped. ``info()`` reports ``r``, the eigenvalues kept and, from a
Hutchinson estimate of ``trace(G)``, the share of the spectrum they capture. At ``r >= P - 1`` ARPACK
cannot run (it needs ``r < P``), and the subspace is the whole space: the matrix is assembled from ``P``
products and decomposed densely, which is then the exact pseudo-inverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from interp.device import to_numpy
from interp.errors import InterpError
from interp.inverse import InverseOperator, _check_damping, symmetric_eigh

HUTCHINSON_PROBES = 16


@dataclass(eq=False)
class ArnoldiInverse(InverseOperator):
    """``V diag(1 / (w + damping)) V^T`` over the ``r`` leading eigenpairs ``(w, V)``; directions with
    ``w + damping <= 0`` are dropped too."""

    eigenvalues: torch.Tensor  # (r,), descending
    eigenvectors: torch.Tensor  # (P, r)
    damping: float
    curvature: str
    trace_estimate: float | None = None
    products: int = 0
    dense: bool = False
    method: str = field(default="arnoldi", init=False)

    def __post_init__(self):
        _check_damping(self.damping)
        shifted = self.eigenvalues + self.damping
        self._kept = shifted > 0
        self._basis = self.eigenvectors[:, self._kept]
        self._scale = 1.0 / shifted[self._kept]

    @property
    def size(self) -> int:
        return self.eigenvectors.shape[0]

    @property
    def device(self) -> torch.device:
        return self.eigenvectors.device

    @property
    def rank(self) -> int:
        return int(self._kept.sum())

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        cols, vec = self._columns(b)
        out = self._basis @ (self._scale.unsqueeze(1) * (self._basis.T @ cols))
        return out.flatten() if vec else out

    def with_settings(self, *, rcond="same", damping: float | None = None) -> ArnoldiInverse:
        d = self.damping if damping is None else damping
        return ArnoldiInverse(self.eigenvalues, self.eigenvectors, d, self.curvature, self.trace_estimate,
                              self.products, self.dense)  # fmt: skip

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        """Share of the gradients' squared norm outside the kept subspace."""
        g = g.to(self.device, torch.float64)
        total = float((g * g).sum())
        return 0.0 if total == 0 else max(0.0, 1.0 - float(((g @ self._basis) ** 2).sum()) / total)

    def info(self) -> dict:
        w = to_numpy(self.eigenvalues)
        captured = float(w[w > 0].sum())
        return {
            "method": "arnoldi",
            "curvature": self.curvature,
            "size": self.size,
            "rank_asked": int(len(w)),
            "rank_kept": self.rank,
            "n_dropped": self.size - self.rank,
            "damping": self.damping,
            "largest_eigenvalue": float(w.max()) if len(w) else 0.0,
            "smallest_kept_eigenvalue": float(w[to_numpy(self._kept)].min()) if self.rank else 0.0,
            "trace_estimate": self.trace_estimate,
            "captured_trace_share": captured / self.trace_estimate if self.trace_estimate else None,
            "products": self.products,
            "solver": "dense eigh of the assembled matrix (rank >= P - 1)" if self.dense else "Lanczos (scipy eigsh)",
        }


def hutchinson_trace(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, device, probes: int = HUTCHINSON_PROBES,
                     seed: int = 0) -> float:  # fmt: skip
    """``trace(G) ~ mean_k z_k^T G z_k`` over Rademacher ``z_k`` (one block of ``probes`` products)."""
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randint(0, 2, (size, probes), generator=gen, dtype=torch.float64) * 2 - 1).to(device)
    return float((z * matvec(z).to(torch.float64)).sum() / probes)


def arnoldi_inverse(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    *,
    rank: int,
    damping: float = 0.0,
    curvature: str = "ggn",
    device: torch.device | str = "cpu",
    tol: float = 1e-8,
    chunk: int = 64,
) -> ArnoldiInverse:
    """The top-``rank`` eigenpairs of the symmetric operator ``matvec`` (``(P, k) -> (P, k)``) and their
    damped inverse (see the module's docstring)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InterpError(f"rank must be an integer >= 1, got {rank!r}")
    rank = min(rank, size)
    dev = torch.device(device)
    products = 0
    if rank >= size - 1:
        eye = torch.eye(size, dtype=torch.float64, device=dev)
        mat = torch.cat([matvec(eye[:, s : s + chunk]).to(torch.float64) for s in range(0, size, chunk)], dim=1)
        w, v = symmetric_eigh((mat + mat.T) / 2)
        trace, products = float(torch.diagonal(mat).sum()), size
        order = torch.argsort(w, descending=True)[:rank]
        return ArnoldiInverse(w[order], v[:, order], damping, curvature, trace, products, dense=True)
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(x):
        nonlocal products
        products += 1
        col = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(size, -1)).to(dev)
        return to_numpy(matvec(col).to(torch.float64)).reshape(x.shape)

    op = LinearOperator((size, size), matvec=mv, dtype=np.float64)
    w, v = eigsh(op, k=rank, which="LA", tol=tol, ncv=min(size, max(2 * rank + 1, rank + 32)))
    order = np.argsort(w)[::-1].copy()
    trace = hutchinson_trace(matvec, size, dev)
    return ArnoldiInverse(torch.from_numpy(w[order]).to(dev), torch.from_numpy(v[:, order]).to(dev), damping,
                          curvature, trace, products + HUTCHINSON_PROBES)  # fmt: skip

"""The damped inverse of a positive semi-definite matrix of low rank, given as a factor ``G = F^T F``.

With ``F`` ``(m, P)`` and ``m < P`` (``m = n C`` rows for the GGN of ``n`` examples and ``C`` classes),
the Gram matrix ``F F^T = U diag(s) U^T`` (``m x m``) gives ``G``'s nonzero eigenpairs: eigenvalues ``s``,
eigenvectors ``V = F^T U diag(s)^-1/2`` (orthonormal). Then, exactly,

    (G + damping I)^-1 = I / damping + V diag(1 / (s + damping) - 1 / damping) V^T,

an ``m x m`` eigendecomposition instead of a ``P x P`` one (the Woodbury identity in eigen-form). The
``P - m`` directions of ``G``'s null space get ``1 / damping``: nothing is dropped, so ``damping > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from interp.device import to_numpy
from interp.errors import InterpError
from interp.inverses.eigen import EigenbasisInverse, symmetric_eigh


@dataclass(eq=False)
class LowRankInverse(EigenbasisInverse):
    """``(V diag(s) V^T + damping I)^-1`` for orthonormal ``V`` ``(P, r)`` (see the module's docstring): the
    eigenbasis template with nothing cut and the complement of ``V`` given ``1 / damping``."""

    eigenvalues: torch.Tensor  # (r,), > 0
    eigenvectors: torch.Tensor  # (P, r)
    damping: float
    rcond: float = field(default=0.0, init=False)  # nothing is cut: every eigenvalue is > 0 and damping > 0
    method: str = field(default="lowrank", init=False)
    fills_complement = True

    def __post_init__(self):
        if not (np.isfinite(self.damping) and self.damping > 0):
            raise InterpError(f"a low-rank inverse needs damping > 0 (its null space), got {self.damping}")

    def with_settings(self, *, rcond="same", damping: float | None = None) -> LowRankInverse:
        return LowRankInverse(self.eigenvalues, self.eigenvectors, self.damping if damping is None else damping)

    def spectrum(self) -> np.ndarray:
        """Every eigenvalue of ``G``: the nonzero ones and ``P - r`` zeros, ascending."""
        w = to_numpy(self.eigenvalues)
        return np.sort(np.concatenate([np.zeros(self.size - len(w)), w]))

    def info(self) -> dict:
        return {"method": "lowrank", "size": self.size, "damping": self.damping, "rank_kept": self.size,
                "n_dropped": 0, "nonzero_eigenvalues": int(len(self.eigenvalues)),
                "solver": "eigh of the m x m Gram matrix of the factor (Woodbury)"}  # fmt: skip


def lowrank_inverse(factor: torch.Tensor, damping: float, tol: float = 1e-12) -> LowRankInverse:
    """``(F^T F + damping I)^-1`` from ``F`` ``(m, P)``, float64; eigenvalues of ``F F^T`` at or under ``tol``
    times the largest are zero (their directions get ``1 / damping`` like the rest of the null space)."""
    f = factor.to(torch.float64)
    s, u = symmetric_eigh(f @ f.T)
    keep = s > tol * max(float(s.max()), 0.0) if len(s) else s > 0
    s, u = s[keep], u[:, keep]
    v = f.T @ (u / s.sqrt())
    return LowRankInverse(s, v, damping)

"""The damped inverse (or pseudo-inverse) of a positive semi-definite matrix of low rank, given as a factor
``G = F^T F``.

With ``F`` ``(m, P)`` and ``m < P`` (``m = n C`` rows for the GGN of ``n`` examples and ``C`` classes),
the Gram matrix ``F F^T = U diag(s) U^T`` (``m x m``) gives ``G``'s nonzero eigenpairs: eigenvalues ``s``,
eigenvectors ``V = F^T U diag(s)^-1/2`` (orthonormal). Then, exactly,

    (G + damping I)^-1 = I / damping + V diag(1 / (s + damping) - 1 / damping) V^T,

an ``m x m`` eigendecomposition instead of a ``P x P`` one (the Woodbury identity in eigen-form). The ``P - m``
directions of ``G``'s null space get ``1 / damping``. With a cut-off ``rcond``, as the dense pseudo-inverse: a
direction whose ``|s + damping|`` is at or under ``rcond * max(s + damping)`` is dropped, the null space too once
``damping`` is (at damping 0 it always is: the pseudo-inverse ``V diag(1 / s) V^T``).

``V`` is never formed (:class:`FactoredBasis`): a product with it goes through ``F`` and ``W = U diag(s)^-1/2``. That
saves the ``P x m x r`` product forming it costs (16 s of the 30 s the inverse of a 4,000 x 74,634 factor took on 2
cores) for ``m / r`` times the work of every later product with it (``r`` nonzero eigenvalues of ``m``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.device import to_numpy
from interp.inverses.base import check_damping, resolve_rcond
from interp.inverses.eigen import EigenbasisInverse, symmetric_eigh


@dataclass(frozen=True, eq=False)
class FactoredBasis:
    """``V = F^T W`` ``(P, r)`` held as ``F`` ``(m, P)`` and ``W`` ``(m, r)``, or its transpose: what the eigenbasis
    template asks of ``V`` (``shape``, ``device``, ``.T``, columns ``[:, mask]``, ``@`` on either side), each product
    as two, ``V y = F^T (W y)``, ``V^T y = W^T (F y)``. Written here because a lazily multiplied factor pair is all
    that is needed and torch has no such operator (curvlinops' and scipy's linear operators take no ``[:, mask]``
    and no products from the left)."""

    factor: torch.Tensor
    coefficients: torch.Tensor
    transposed: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        p, r = self.factor.shape[1], self.coefficients.shape[1]
        return (r, p) if self.transposed else (p, r)

    @property
    def device(self) -> torch.device:
        return self.factor.device

    @property
    def T(self) -> FactoredBasis:
        return FactoredBasis(self.factor, self.coefficients, not self.transposed)

    def __getitem__(self, index) -> FactoredBasis:
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        if self.transposed or not (isinstance(rows, slice) and rows == slice(None)):
            raise IndexError("only columns of V can be selected: V[:, mask]")
        return FactoredBasis(self.factor, self.coefficients[:, cols])

    def __matmul__(self, y: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return self.coefficients.T @ (self.factor @ y)
        return self.factor.T @ (self.coefficients @ y)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return (x @ self.coefficients.T) @ self.factor
        return (x @ self.factor.T) @ self.coefficients

    def dense(self) -> torch.Tensor:
        """``V`` (or ``V^T``) formed."""
        v = self.factor.T @ self.coefficients
        return v.T if self.transposed else v


@dataclass(eq=False)
class LowRankInverse(EigenbasisInverse):
    """``(V diag(s) V^T + damping I)^+`` for orthonormal ``V`` ``(P, r)`` (see the module's docstring): the eigenbasis
    template, the complement of ``V`` given ``1 / damping`` where the cut-off keeps it."""

    eigenvalues: torch.Tensor  # (r,), > 0
    eigenvectors: torch.Tensor | FactoredBasis  # (P, r)
    damping: float
    rcond: float | str | None = 0.0  # 0: nothing cut (the Kronecker fallback's exact damped inverse)
    method: str = "lowrank"
    solver: str = "eigh of the m x m Gram matrix of the factor (Woodbury)"

    def __post_init__(self):
        check_damping(self.damping)
        self.rcond = resolve_rcond(self.rcond, self.size)

    @property
    def fills_complement(self) -> bool:
        """The null space of ``G`` (eigenvalue 0, ``damping`` once damped) is kept where it is above the cut-off."""
        return self.damping > 0 and self.damping > self.cutoff

    @property
    def largest(self) -> float:
        return max(super().largest, self.damping)

    def with_settings(self, *, rcond="same", damping: float | None = None) -> LowRankInverse:
        return LowRankInverse(self.eigenvalues, self.eigenvectors, self.damping if damping is None else damping,
                              self.rcond if rcond == "same" else rcond, self.method, self.solver)  # fmt: skip

    def spectrum(self) -> np.ndarray:
        """Every eigenvalue of ``G``: the nonzero ones and ``P - r`` zeros, ascending."""
        w = to_numpy(self.eigenvalues)
        return np.sort(np.concatenate([np.zeros(self.size - len(w)), w]))

    def info(self) -> dict:
        return {"method": self.method, **self._kept_facts(), "nonzero_eigenvalues": int(len(self.eigenvalues)),
                "solver": self.solver}  # fmt: skip


GRAM_ROWS = 512  # rows of F a product takes at a time: 26 s for a 4,000 x 74,634 factor on one core (F @ F.T: 46 s)


def factor_gram(factor: torch.Tensor, rows: int = GRAM_ROWS) -> torch.Tensor:
    """``F F^T`` ``(m, m)`` of ``F`` ``(m, P)``, exactly symmetric: each block of ``rows`` rows against the rows from
    it on, ``F[i:i+b] F[i:]^T``, mirrored into the lower triangle.

    About half the multiply-adds of ``F @ F.T`` (``(1 + b / m) / 2`` of them). Written here because torch exposes no
    symmetric rank-k update (BLAS ``syrk``), and scipy's would run on the CPU alone and outside torch's thread count.
    """
    m = factor.shape[0]
    out = torch.empty(m, m, dtype=factor.dtype, device=factor.device)
    for i in range(0, m, rows):
        block = factor[i : i + rows] @ factor[i:].T
        out[i : i + rows, i:] = block
        out[i:, i : i + rows] = block.T
    return out


def gram_eigenpairs(factor: torch.Tensor, top: int | None = None,
                    tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """``G = F^T F``'s nonzero eigenpairs (the ``top`` largest; all by default) from the Gram matrix
    ``F F^T = U diag(s) U^T`` of ``F`` ``(m, P)``: ``(s, U, trace(G))``, ``s`` descending, ``G``'s eigenvectors
    ``F^T U diag(s)^-1/2``. An eigenvalue at or under ``tol`` times the largest belongs to the null space and is not
    returned (its direction would be ``F^T u / 0``), so fewer than ``top`` come back where ``G`` has fewer nonzero
    ones."""
    gram = factor_gram(factor)
    s, u = symmetric_eigh(gram, top=top)
    s, u = s.flip(0), u.flip(1)
    keep = s > tol * max(float(s[0]), 0.0) if len(s) else s > 0
    return s[keep], u[:, keep], float(torch.diagonal(gram).sum())


def lowrank_inverse(factor: torch.Tensor, damping: float, tol: float = 1e-12,
                    rcond: float | str | None = 0.0) -> LowRankInverse:  # fmt: skip
    """``(F^T F + damping I)^+`` from ``F`` ``(m, P)``, float64, with the cut-off ``rcond`` (default: none);
    eigenvalues of ``F F^T`` at or under ``tol`` times the largest are zero (their directions belong to the null
    space)."""
    f = factor.to(torch.float64)
    s, u, _ = gram_eigenpairs(f, tol=tol)
    return LowRankInverse(s, FactoredBasis(f, u / s.sqrt()), damping, rcond)

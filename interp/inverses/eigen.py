"""Inverses in an eigenbasis: the one template of the spectral pseudo-inverse, Arnoldi's top eigenspace and the
low-rank (Woodbury) inverse.

With eigenpairs ``(w, V)`` of ``H`` (``V`` ``(P, r)`` orthonormal, ``r <= P``)

    (H + damping I)^+ = V diag(1 / (w + damping))_kept V^T + c (I - V V^T),

where a direction of ``V`` is kept when ``|w + damping| > rcond * max |w + damping|`` (the cut-off) and the
complement of ``V`` gets ``c``: 0 when it is dropped (a pseudo-inverse, a truncated eigenbasis) or ``1 / damping``
when it is the null space of a low-rank ``H``, kept exactly. The share of the gradients' norm an operator drops is
``1 - ||G V_kept||_F^2 / ||G||_F^2`` (0 when nothing is dropped).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from interp.inverses.base import InverseOperator


def symmetric_eigh(a: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of symmetric float64 ``a``, on its device; with ``top``, only the
    ``top`` largest (still ascending).

    On the CPU through LAPACK's MRRR driver (``scipy.linalg.eigh(driver="evr")``): on the shipped
    sources' head Hessians it gave pseudo-inverse solutions closer to an extended-precision reference
    than the divide-and-conquer driver behind ``torch.linalg.eigh`` (``tests/interp/inverses/test_dense.py``),
    and it computes only the eigenpairs asked for (the top 200 of a 4,000 x 4,000 matrix: 5.6 s against 10.5 s
    for all, one core); on CUDA, cuSOLVER's through ``torch.linalg.eigh``, sliced.
    """
    n = a.shape[0]
    top = n if top is None else min(max(int(top), 0), n)
    if a.device.type != "cpu":
        w, v = torch.linalg.eigh(a)
        return w[n - top :], v[:, n - top :]
    import scipy.linalg

    if top == 0:
        return torch.zeros(0, dtype=a.dtype), torch.zeros(n, 0, dtype=a.dtype)
    subset = None if top == n else [n - top, n - 1]
    w, v = scipy.linalg.eigh(a.numpy(), driver="evr", check_finite=False, subset_by_index=subset)
    return torch.from_numpy(w), torch.from_numpy(v)


def arpack_start(size: int, seed: int = 0) -> np.ndarray:
    """A fixed start vector for ARPACK (``eigsh(..., v0=...)``): uniform on ``[-1, 1]^size`` as ARPACK draws its own,
    but from ``seed``, so that a Lanczos run (its eigenpairs, and how many products it takes) repeats from one call
    and process to the next on one machine; ARPACK's own draw advances with every call in a process."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size)


class EigenbasisInverse(InverseOperator):
    """The template above. A subclass (a dataclass) holds ``eigenvalues`` ``(r,)`` (of the undamped ``H``),
    ``eigenvectors`` ``(P, r)``, ``damping`` and ``rcond`` (resolved to a number), and sets :attr:`fills_complement`
    where the complement of ``V`` is kept (gets ``1 / damping``)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    rcond: float
    fills_complement = False

    @property
    def size(self) -> int:
        return self.eigenvectors.shape[0]

    @property
    def device(self) -> torch.device:
        return self.eigenvectors.device

    @cached_property
    def _shifted(self) -> torch.Tensor:
        return self.eigenvalues + self.damping

    @property
    def largest(self) -> float:
        return float(self._shifted.abs().max()) if len(self._shifted) else 0.0

    @property
    def cutoff(self) -> float:
        return self.rcond * self.largest

    @cached_property
    def kept(self) -> torch.Tensor:
        """Boolean mask of the eigen-directions of ``V`` kept, ``(r,)``."""
        return self._shifted.abs() > self.cutoff

    @property
    def rank(self) -> int:
        complement = self.size - self.eigenvectors.shape[1] if self.fills_complement else 0
        return int(self.kept.sum()) + complement

    @cached_property
    def _basis(self) -> torch.Tensor:
        return self.eigenvectors[:, self.kept]

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        """``V_kept diag(1 / (s + damping)) V_kept^T cols``; where the complement is kept, in one pass over ``V``:
        ``cols / damping + V diag(d) V^T cols`` with ``d = 1 / (s + damping) - 1 / damping`` on kept directions and
        ``-1 / damping`` on dropped ones (which so get nothing)."""
        if not self.fills_complement:
            scale = (1.0 / self._shifted[self.kept]).unsqueeze(1)
            return self._basis @ (scale * (self._basis.T @ cols))
        v = self.eigenvectors
        d = torch.where(self.kept, 1.0 / self._shifted, 0.0) - 1.0 / self.damping
        return cols / self.damping + v @ (d.unsqueeze(1) * (v.T @ cols))

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        """Share of ``sum_i ||g_i||^2`` in the dropped directions: ``||G V_dropped||_F^2 / ||G||_F^2`` where the
        complement of ``V`` is kept, else ``1 - ||G V_kept||_F^2 / ||G||_F^2``.

        ``g`` ``(n, P)``: gradients in the operator's coordinates. 0 when nothing that matters is
        dropped; near 1 when the cut-off throws the gradients away.
        """
        g = g.to(self.device, torch.float64)
        total = float((g * g).sum())
        if total == 0:
            return 0.0
        if self.fills_complement:
            return float(((g @ self.eigenvectors[:, ~self.kept]) ** 2).sum()) / total
        return max(0.0, 1.0 - float(((g @ self._basis) ** 2).sum()) / total)

    def _kept_facts(self) -> dict:
        """What every eigenbasis inverse reports of its cut-off (the numbers of the shifted eigenvalues)."""
        shifted = self._shifted
        kept, dropped = shifted[self.kept], shifted[~self.kept]
        return {
            "size": self.size,
            "rank_kept": self.rank,
            "rcond": self.rcond,
            "cutoff": self.cutoff,
            "damping": self.damping,
            "largest_eigenvalue": self.largest,
            "smallest_kept_eigenvalue": float(kept.abs().min()) if len(kept) else 0.0,
            "n_dropped": self.size - self.rank,
            "dropped_eigenvalues_max_abs": float(dropped.abs().max()) if len(dropped) else 0.0,
        }

    def _eigenvalues_numpy(self) -> np.ndarray:
        return self.eigenvalues.detach().cpu().numpy()

"""Conjugate gradients on curvature products: the matrix-free inverse (registers ``cg``).

Started from zero, CG's iterates stay in the Krylov space of the right-hand side inside the range of ``H``, so for
right-hand sides in that range it converges to the minimum-norm (pseudo-inverse) solution.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError, require_finite
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator, check_damping


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, int, float]:
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
        curvature = (p * hp).sum(0)
        bad = active & (curvature <= 0)
        if bool(bad.any()):
            worst = float((curvature[bad] / (p[:, bad] * p[:, bad]).sum(0)).min())
            raise InterpError(
                f"H + damping I is not positive definite: curvature {worst:.3g} along a CG direction at iteration "
                f"{it}; CG needs a positive definite system (a hidden layer's Hessian can be indefinite): raise "
                "--damping above minus its most negative eigenvalue, or use a dense method (eigh)"
            )
        alpha = torch.where(active, rs / curvature.clamp_min(1e-300), torch.zeros_like(rs))
        x += alpha * p
        r -= alpha * hp
        rs_new = (r * r).sum(0)
        if bool((rs_new <= target).all()):
            return x, it, float((rs_new / norms).sqrt().max())
        p = r + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return x, max_iter, float((rs / norms).sqrt().max())



@dataclass(eq=False)
class ConjugateGradientInverse(InverseOperator):
    """``(H + damping I)^+ b`` by conjugate gradient on Hessian-vector products ``matvec``.

    For parameter sets whose ``P x P`` Hessian does not fit (see
    :func:`interp.hessian_vector_product`). Solves ``chunk`` columns at a time; :meth:`info` reports
    the most iterations and the worst relative residual over every solve so far, and a solve that
    stops at ``max_iter`` above ``tol`` raises a :class:`UserWarning` naming the residual reached.
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    size: int
    damping: float = 0.0
    tol: float = 1e-10
    max_iter: int = 1000
    chunk: int = 64
    on: torch.device | str = "cpu"
    progress: bool = False
    method: str = field(default="cg", init=False)
    _iterations: int = field(default=0, init=False)
    _residual: float = field(default=0.0, init=False)
    _solves: int = field(default=0, init=False)

    def __post_init__(self):
        check_damping(self.damping)
        if not 0 < self.tol < 1 or self.max_iter < 1 or self.chunk < 1:
            raise InterpError(
                f"CG needs 0 < tol < 1, max_iter >= 1, chunk >= 1; got {self.tol}, {self.max_iter}, {self.chunk}"
            )

    @property
    def device(self) -> torch.device:
        return torch.device(self.on)

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(cols)
        residual = 0.0
        for start in tqdm(range(0, cols.shape[1], self.chunk), desc="CG solves", disable=not self.progress):
            x, iters, res = conjugate_gradient(
                self.matvec,
                cols[:, start : start + self.chunk],
                damping=self.damping,
                tol=self.tol,
                max_iter=self.max_iter,
            )
            out[:, start : start + self.chunk] = x
            self._iterations, residual = max(self._iterations, iters), max(residual, res)
            self._solves += x.shape[1]
        self._residual = max(self._residual, residual)
        if residual > self.tol:
            warnings.warn(
                f"CG did not converge: relative residual {residual:.3g} after {self.max_iter} iterations "
                f"(tol {self.tol:g}); the influence values are approximate: raise the iteration limit, add damping "
                "or use a dense method",
                stacklevel=3,
            )
        return out

    def info(self) -> dict:
        return {
            "method": "cg",
            "size": self.size,
            "damping": self.damping,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "solves": self._solves,
            "max_iterations": self._iterations,
            "max_relative_residual": self._residual,
            "converged": self._residual <= self.tol,
        }

    def report(self) -> list[str]:
        if self._residual <= self.tol:
            return [f"cg: converged in at most {self._iterations} iterations (relative residual {self._residual:.2g})"]
        return [f"warning: CG stopped at its iteration limit with relative residual {self._residual:.3g} (tol "
                f"{self.tol:g}); the influence values are approximate"]  # fmt: skip


@dataclass(frozen=True)
class CGOptions:
    """The settings of ``--method cg``."""

    cg_tol: float = field(default=1e-10, metadata={"help": "relative residual at which a solve stops"})
    cg_max_iter: int = field(default=1000, metadata={"help": "iteration limit; a solve that reaches it unconverged "
                                                              "is reported"})  # fmt: skip

    def __post_init__(self):
        if not (isinstance(self.cg_tol, (int, float)) and 0 < self.cg_tol < 1):
            raise InterpError(f"cg_tol must be a finite number in (0, 1), got {self.cg_tol!r}")
        if isinstance(self.cg_max_iter, bool) or not isinstance(self.cg_max_iter, int) or self.cg_max_iter < 1:
            raise InterpError(f"cg_max_iter must be an integer >= 1, got {self.cg_max_iter!r}")


def _cg(curvature: Curvature, *, damping: float, progress: bool, cg_tol: float, cg_max_iter: int) -> InverseOperator:
    return ConjugateGradientInverse(curvature.matvec, curvature.size, damping=damping, tol=cg_tol, max_iter=cg_max_iter,
                                    on=curvature.device, progress=progress)  # fmt: skip


INVERSES.register(InverseMethod("cg", _cg, needs="hvp", cutoff=False, options=CGOptions,
                                help="conjugate gradient on Hessian-vector products (matrix-free, no cut-off)"))

"""Conjugate gradients on curvature products: the matrix-free inverse (registers ``cg``).

Started from zero, CG's iterates stay in the Krylov space of the right-hand side inside the range of ``H``, so for
right-hand sides in that range it converges to the minimum-norm (pseudo-inverse) solution.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError, require_finite
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator, check_damping

# what info() (and so meta.json) keeps of a preconditioner's own facts: the eigenpairs' count, how they were found
# and the products they took, for the arnoldi one
PRECONDITIONER_FACTS = ("method", "damping", "curvature", "eigenpairs", "solver", "products")


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Solve ``(H + damping I) x = b`` for PSD ``H`` given by ``matvec``, column-wise, from ``x = 0``.

    ``b`` is ``(P, k)``; the ``k`` systems run together. Started from zero, the iterates stay in
    the Krylov space of ``b`` inside the range of ``H``, so for ``b`` in that range CG converges to
    the minimum-norm solution, ``H^+ b``, the pseudo-inverse answer. With ``precondition`` (``r -> M^{-1} r`` for a
    symmetric positive definite ``M`` close to ``H + damping I``, such as its K-FAC or EK-FAC inverse) it is
    preconditioned CG: the same solution, in as many iterations as ``M^{-1} (H + damping I)`` needs, far fewer where
    ``M`` is a good approximation. Returns ``(x, iterations, relative residual)``, the last being
    ``max_k ||b_k - (H + damping I) x_k|| / ||b_k||`` as tracked by the recursion; stops when every column's is below
    ``tol`` or after ``max_iter`` iterations.
    """
    if not 0 < tol < 1 or max_iter < 1 or not np.isfinite(damping) or damping < 0:
        raise InterpError(
            f"CG needs 0 < tol < 1, max_iter >= 1 and finite damping >= 0; got {tol}, {max_iter}, {damping}"
        )
    require_finite(b, "the right-hand sides of the CG solve")
    b = b.to(torch.float64)
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r).to(torch.float64) if precondition is not None else r
    p = z.clone()
    rz, rr = (r * z).sum(0), (r * r).sum(0)
    norms = (b * b).sum(0).clamp_min(1e-300)
    target = tol**2 * norms
    for it in range(1, max_iter + 1):
        active = rr > target  # converged columns stop moving
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
        alpha = torch.where(active, rz / curvature.clamp_min(1e-300), torch.zeros_like(rz))
        x += alpha * p
        r -= alpha * hp
        rr = (r * r).sum(0)
        if bool((rr <= target).all()):
            return x, it, float((rr / norms).sqrt().max())
        z = precondition(r).to(torch.float64) if precondition is not None else r
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    return x, max_iter, float((rr / norms).sqrt().max())


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
    preconditioner: InverseOperator | None = None  # M^{-1}, e.g. an EK-FAC inverse at the same damping
    method: str = "cg"
    curvature: str = "Hessian-vector products"
    unconverged_hint: str = ""  # what the report adds where a solve stopped at its limit (a better option to try)
    _iterations: int = field(default=0, init=False)
    _residual: float = field(default=0.0, init=False)
    _solves: int = field(default=0, init=False)
    _seconds: float = field(default=0.0, init=False)

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
        residual, t0 = 0.0, time.perf_counter()
        precondition = self.preconditioner.apply if self.preconditioner is not None else None
        for start in tqdm(range(0, cols.shape[1], self.chunk), desc=f"{self.method} solves", disable=not self.progress):
            x, iters, res = conjugate_gradient(
                self.matvec,
                cols[:, start : start + self.chunk],
                damping=self.damping,
                tol=self.tol,
                max_iter=self.max_iter,
                precondition=precondition,
            )
            out[:, start : start + self.chunk] = x
            self._iterations, residual = max(self._iterations, iters), max(residual, res)
            self._solves += x.shape[1]
        self._residual = max(self._residual, residual)
        self._seconds += time.perf_counter() - t0
        if residual > self.tol:
            warnings.warn(
                f"CG did not converge: relative residual {residual:.3g} after {self.max_iter} iterations "
                f"(tol {self.tol:g}); the influence values are approximate: raise the iteration limit, add damping "
                "or use a dense method",
                stacklevel=3,
            )
        return out

    def with_settings(self, *, rcond="same", damping: float | None = None) -> ConjugateGradientInverse:
        """The same products (and preconditioner, at the new damping) under another damping: nothing recomputed."""
        d = self.damping if damping is None else damping
        pre = self.preconditioner.with_settings(damping=d) if self.preconditioner is not None else None
        return dataclasses.replace(self, damping=d, preconditioner=pre)  # the counters start again

    def info(self) -> dict:
        pre = self.preconditioner.info() if self.preconditioner is not None else None
        return {
            "method": self.method,
            "curvature": self.curvature,
            "size": self.size,
            "damping": self.damping,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "preconditioner": {k: pre[k] for k in PRECONDITIONER_FACTS if k in pre} if pre else None,
            "solves": self._solves,
            "max_iterations": self._iterations,
            "max_relative_residual": self._residual,
            "converged": self._residual <= self.tol,
            "solve_seconds": self._seconds,
        }

    def report(self) -> list[str]:
        pre = f", preconditioned by {self.preconditioner.method}" if self.preconditioner is not None else ""
        if self._residual <= self.tol:
            return [f"{self.method}: conjugate gradient on {self.curvature}{pre}: converged in at most {self._iterations} "
                    f"iterations (relative residual {self._residual:.2g}), {self._seconds:.1f} s of solves"]  # fmt: skip
        hint = f"; {self.unconverged_hint}" if self.unconverged_hint else ""
        return [f"warning: {self.method} stopped at its iteration limit with relative residual {self._residual:.3g} "
                f"(tol {self.tol:g}); the influence values are approximate{hint}"]  # fmt: skip


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
                                    on=curvature.device, progress=progress,
                                    curvature=getattr(curvature.matvec, "description", "") or "Hessian-vector products")  # fmt: skip


INVERSES.register(
    InverseMethod(
        "cg",
        _cg,
        needs="hvp",
        cutoff=False,
        options=CGOptions,
        help="conjugate gradient on Hessian-vector products (matrix-free, no cut-off)",
    )
)

"""An inverse refined toward the exact curvature: conjugate gradients on exact GGN (or Hessian) products,
preconditioned by EK-FAC (registers ``refined``; the idea of ASTRA, Wang et al. 2025).

EK-FAC is a fast but approximate inverse (its per-row ranking agreement with the exact GGN is low); CG on the exact
curvature converges to the exact ``(G + damping I)^{-1} g`` but slowly when ``G`` is ill-conditioned. Preconditioned
by EK-FAC at the same damping, CG solves ``(G + damping I) x = g`` in the iterations ``M^{-1} (G + damping I)`` needs
(``M``: the EK-FAC matrix), and every iteration is one exact product: the solution is the exact inverse's, to the
relative residual ``refined_tol``. Where no dense matrix fits (a whole fine-tuned block), a solve to a tight tolerance
is the exact reference for the others. The products are the GGN's by default (through its cached factor where it fits,
else curvlinops'), or the Hessian's (``refined_curvature hessian``: not positive semi-definite off a minimum, where CG
refuses with the curvature it met).

EK-FAC is a poor guide where the damping is small and ``G`` has fewer nonzero eigenvalues than parameters (``n C`` GGN
rows under ``P``): ``G + damping I`` is ``damping`` on the null space, one eigenvalue plain CG resolves at once, while
EK-FAC's Kronecker eigenbasis gives that space eigenvalues far above ``damping`` and so spreads it out for CG to
resolve. ``refined_preconditioner arnoldi`` uses the top ``refined_rank`` eigenpairs ``(w, V)`` of the exact curvature
instead (from the ``arnoldi`` method: Lanczos, or the cached factor's Gram matrix), a deflation preconditioner (the
form of Frangella, Tropp and Udell's 2023 Nystroem preconditioner, with exact eigenpairs)::

    M^{-1} = (w_r + damping) V diag(1 / (w + damping)) V^T + (I - V V^T)

so ``M^{-1} (G + damping I)`` is ``w_r + damping`` on ``V``'s span and ``G + damping I`` off it: its condition number is
at most ``(w_r + damping) / damping`` (``w_r`` the smallest of the ``r``), whatever the null space holds. It also took
far fewer iterations than EK-FAC (and than none) where ``G`` has more rows than parameters (docs: the validation guide).
The default stays EK-FAC, the recipe the method is named for; the eigenpairs cost about ``2 r`` products where no
factor is cached (measured there too: ``benchmarks/refined_without_factor.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.curvature.ggn import ggn_products
from interp.curvature.hessian import hessian_vector_product
from interp.errors import InterpError
from interp.inverses.arnoldi import ARNOLDI_RANK, ArnoldiInverse, arnoldi_inverse
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator
from interp.inverses.cg import ConjugateGradientInverse
from interp.inverses.kronecker import kronecker_inverse

PRECONDITIONERS = ("ekfac", "kfac", "arnoldi", "none")
HINT = ("--refined-preconditioner arnoldi (the exact curvature's top eigenpairs) converged in far fewer iterations than "
        "EK-FAC in every setting measured (the validation guide)")  # fmt: skip


@dataclass(eq=False)
class DeflationPreconditioner(InverseOperator):
    """``M^{-1} = (w_r + damping) V diag(1 / (w + damping)) V^T + (I - V V^T)`` over the positive top eigenpairs
    ``(w, V)`` of ``eigen`` (``w_r`` the smallest of them; see the module's docstring). Written here because it is six
    lines over eigenpairs the ``arnoldi`` method already computes; no library of the field offers it as an operator."""

    eigen: ArnoldiInverse
    method: str = field(default="arnoldi", init=False)

    def __post_init__(self):
        keep = self.eigen.eigenvalues > 0  # once, not at every CG iteration: the columns of V it uses
        self._w = self.eigen.eigenvalues[keep]
        self._v = self.eigen.eigenvectors if bool(keep.all()) else self.eigen.eigenvectors[:, keep]

    @property
    def size(self) -> int:
        return self.eigen.size

    @property
    def damping(self) -> float:
        return self.eigen.damping

    @property
    def device(self) -> torch.device:
        return self.eigen.device

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        w, v = self._w, self._v
        if not len(w):
            return cols.clone()
        scale = (w.min() + self.damping) / (w + self.damping) - 1  # M^{-1} - I on V's span
        return cols + v @ (scale[:, None] * (v.T @ cols))

    def with_settings(self, *, rcond="same", damping: float | None = None) -> DeflationPreconditioner:
        return DeflationPreconditioner(self.eigen.with_settings(damping=damping))

    def info(self) -> dict:
        facts = self.eigen.info()
        return {"method": self.method, "damping": self.damping, "curvature": self.eigen.curvature,
                "eigenpairs": facts["eigenpairs_found"], "solver": facts["solver"],
                "products": facts["products"]}  # fmt: skip


@dataclass(frozen=True)
class RefinedOptions:
    """The settings of ``--method refined``."""

    refined_preconditioner: str = field(default="ekfac", metadata={"help": "the preconditioner: ekfac, kfac, arnoldi "
                                        "(the top --refined-rank eigenpairs of the exact curvature: far fewer iterations "
                                        "than EK-FAC in every setting measured) or none (plain conjugate gradients)"})  # fmt: skip
    refined_rank: int = field(default=ARNOLDI_RANK, metadata={"help": "eigenpairs of the arnoldi preconditioner"})
    refined_tol: float = field(default=1e-6, metadata={"help": "relative residual at which a solve stops"})
    refined_max_iter: int = field(default=300, metadata={"help": "iteration limit (each iteration: one exact product)"})
    refined_curvature: str = field(default="ggn", metadata={"help": "the exact curvature solved against: ggn or "
                                   "hessian"})  # fmt: skip

    def __post_init__(self):
        if self.refined_preconditioner not in PRECONDITIONERS:
            raise InterpError(f"refined_preconditioner must be one of {', '.join(PRECONDITIONERS)}, got "
                              f"{self.refined_preconditioner!r}")  # fmt: skip
        if not (isinstance(self.refined_tol, (int, float)) and 0 < self.refined_tol < 1):
            raise InterpError(f"refined_tol must be a finite number in (0, 1), got {self.refined_tol!r}")
        if (
            isinstance(self.refined_max_iter, bool)
            or not isinstance(self.refined_max_iter, int)
            or self.refined_max_iter < 1
        ):
            raise InterpError(f"refined_max_iter must be an integer >= 1, got {self.refined_max_iter!r}")
        if isinstance(self.refined_rank, bool) or not isinstance(self.refined_rank, int) or self.refined_rank < 1:
            raise InterpError(f"refined_rank must be an integer >= 1, got {self.refined_rank!r}")
        if self.refined_curvature not in ("ggn", "hessian"):
            raise InterpError(f"refined_curvature must be ggn or hessian, got {self.refined_curvature!r}")


def _refined(curvature: Curvature, *, damping: float, progress: bool, refined_preconditioner: str, refined_tol: float,
             refined_max_iter: int, refined_curvature: str, refined_rank: int) -> ConjugateGradientInverse:  # fmt: skip
    model, data, names = curvature.model, curvature.data, curvature.names()
    if refined_curvature == "ggn":
        products = ggn_products(model, data, names, device=curvature.device)
    else:
        products = hessian_vector_product(model, data, names, device=curvature.device)
    pre = None
    if refined_preconditioner == "arnoldi":
        pre = DeflationPreconditioner(arnoldi_inverse(products, products.size, rank=refined_rank, damping=damping,
                                                      curvature=f"{refined_curvature}: {products.description}",
                                                      device=curvature.device, factor=products.factor,
                                                      trace=False))  # fmt: skip
    elif refined_preconditioner != "none":
        pre = kronecker_inverse(model, data, names, kind=refined_preconditioner, damping=damping,
                                device=curvature.device, progress=progress)  # fmt: skip
    return ConjugateGradientInverse(products, products.size, damping=damping, tol=refined_tol,
                                    max_iter=refined_max_iter, on=curvature.device, progress=progress,
                                    preconditioner=pre, method="refined",
                                    curvature=f"the exact {refined_curvature.upper()}: {products.description}",
                                    unconverged_hint=HINT if refined_preconditioner in ("ekfac", "kfac") else "")  # fmt: skip


INVERSES.register(InverseMethod("refined", _refined, needs="model", cutoff=False, shared="refined", damped=True,
                                options=RefinedOptions,
                                help="conjugate gradients on the exact GGN's products, preconditioned by EK-FAC (or "
                                "--refined-preconditioner): the exact inverse, to --refined-tol"))  # fmt: skip

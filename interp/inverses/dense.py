"""Dense inverses of a symmetric ``(P, P)`` curvature matrix: Cholesky, and the pseudo-inverse by eigh or SVD.

* :class:`SpectralInverse` (``eigh`` or ``svd``): ``H = V diag(w) V^T``; eigenvalues with
  ``|w + damping| <= rcond * max|w + damping|`` are dropped. With ``svd`` the rule is on singular
  values, exactly ``scipy.linalg.pinv(H + damping I, rtol=rcond)``. One factorisation serves every
  cut-off and damping (:meth:`SpectralInverse.with_settings`), as the eigenvectors do not change.
* :class:`CholeskyInverse`: ``H + damping I = L L^T``, no cut-off; positive definite matrices only,
  about 1/25 of the work of an eigendecomposition.

:func:`pseudo_inverse` factorises a dense matrix: ``auto`` takes Cholesky when Lanczos shows that no
eigenvalue would fall under the cut-off, else eigh. All work happens on the device of ``H`` (a GPU factorises on
the GPU); ``apply`` returns float64 on that device. Registers ``auto``, ``cholesky``, ``eigh`` and ``svd``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from interp.device import to_numpy
from interp.errors import InterpError, require_finite, require_symmetric, require_tensor
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator, check_damping, resolve_rcond
from interp.inverses.eigen import EigenbasisInverse, arpack_start, symmetric_eigh

METHODS = ("auto", "cholesky", "eigh", "svd")


def cholesky_solve(lower: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^-1 b`` for a lower factor ``L`` ``(P, P)`` and ``b`` ``(P, k)``: two triangular solves.

    Written out because ``torch.cholesky_solve`` copies the (possibly many-GiB) factor on every
    call: 4.5 s against 0.13 s for one right-hand side at P = 18,441 on this machine.
    """
    return torch.linalg.solve_triangular(lower.mT, torch.linalg.solve_triangular(lower, b, upper=False), upper=True)


@dataclass(eq=False)
class CholeskyInverse(InverseOperator):
    """``(H + damping I)^-1`` through its Cholesky factor; every eigenvalue kept.

    ``largest`` and ``smallest`` are the extreme eigenvalues of ``H + damping I`` (Lanczos
    estimates), ``rcond`` the cut-off that was checked not to drop any of them.
    """

    factor: torch.Tensor
    damping: float
    rcond: float
    largest: float
    smallest: float
    method: str = field(default="cholesky", init=False)

    @property
    def size(self) -> int:
        return self.factor.shape[0]

    @property
    def device(self) -> torch.device:
        return self.factor.device

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        return cholesky_solve(self.factor, cols)

    def info(self) -> dict:
        return {
            "method": "cholesky",
            "size": self.size,
            "rank_kept": self.size,
            "rcond": self.rcond,
            "cutoff": self.rcond * self.largest,
            "damping": self.damping,
            "largest_eigenvalue": self.largest,
            "smallest_kept_eigenvalue": self.smallest,
            "n_dropped": 0,
            "dropped_eigenvalues_max_abs": 0.0,
        }


@dataclass(eq=False)
class SpectralInverse(EigenbasisInverse):
    """The pseudo-inverse from an eigensystem of ``H``: ``V diag(1 / (w + damping))_kept V^T``.

    ``eigenvalues`` ``w`` are those of the undamped ``H`` (signed; from an SVD the sign is recovered
    from the two singular bases, so this equals ``V_right S^-1 U^T``, the SVD pseudo-inverse) and
    ``eigenvectors`` ``V`` ``(P, P)``. Kept: ``|w + damping| > rcond * max|w + damping|``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    rcond: float
    damping: float = 0.0
    method: str = "eigh"

    def __post_init__(self):
        check_damping(self.damping)
        self.rcond = resolve_rcond(self.rcond, self.size)

    def with_settings(self, *, rcond: float | str | None = "same", damping: float | None = None) -> SpectralInverse:
        """The same eigensystem under another cut-off and/or damping: no new factorisation."""
        return SpectralInverse(
            self.eigenvalues,
            self.eigenvectors,
            self.rcond if rcond == "same" else rcond,
            self.damping if damping is None else damping,
            self.method,
        )

    def spectrum(self) -> np.ndarray:
        """Every eigenvalue of ``H`` (kept and dropped, damping not added), ascending."""
        return np.sort(to_numpy(self.eigenvalues))

    def info(self) -> dict:
        return {"method": self.method, **self._kept_facts()}


def spectral_inverse(
    h: torch.Tensor, *, rcond: float | str | None = None, damping: float = 0.0, method: str = "eigh"
) -> SpectralInverse:
    """Eigendecompose symmetric ``H`` (``eigh``, or ``svd`` with the signs recovered) on its device."""
    a = h.to(torch.float64)
    if method == "eigh":
        w, v = symmetric_eigh(a)
    elif method == "svd":
        u, s, vh = torch.linalg.svd(a)
        # symmetric A = U S V^T: v_i = sign(lambda_i) u_i, so lambda_i = s_i * <u_i, v_i>
        w, v = s * torch.sign((u * vh.mT).sum(0)), vh.mT
    else:
        raise InterpError(f"a spectral inverse is eigh or svd, got {method!r}")
    if len(w) and float((w + damping).max()) <= 0:
        raise InterpError(
            f"H + damping I has no positive eigenvalue (largest {float((w + damping).max()):.3g}): it is not the "
            "curvature at a minimum of a loss; check the matrix's sign (the Hessian of the loss, not of its negative)"
        )
    return SpectralInverse(w, v, rcond, damping, method)


def pseudo_inverse(
    h: torch.Tensor, *, rcond: float | str | None = None, damping: float = 0.0, method: str = "auto"
) -> CholeskyInverse | SpectralInverse:
    """Factorise ``H + damping I`` (``(P, P)``, symmetric) on ``H``'s device to apply its pseudo-inverse.

    ``rcond``: a number in [0, 1), ``"exact"`` (default, ``P * eps``) or ``"paper"`` (0.05). ``method``:
    ``auto`` (Cholesky when no eigenvalue would be cut, else eigh), ``cholesky`` (raises when ``H +
    damping I`` is not safely positive definite), ``eigh`` or ``svd``.

    ``h`` must be a square, symmetric (to round-off, :func:`interp.errors.require_symmetric`),
    finite float32/float64 tensor, and ``H + damping I`` must have a positive eigenvalue: a
    negative semi-definite matrix is not the curvature at a minimum of a loss (its sign is wrong).
    Each is an :class:`InterpError` naming the argument.
    """
    if method not in METHODS:
        raise InterpError(f"method must be one of {METHODS}, got {method!r}")
    require_tensor(h, "h (the Hessian)")
    if h.dim() != 2 or h.shape[0] != h.shape[1]:
        raise InterpError(f"h (the Hessian) must be a square (P, P) matrix, got shape {tuple(h.shape)}")
    check_damping(damping)
    p = h.shape[0]
    rcond = resolve_rcond(rcond, p)
    require_finite(h, "the Hessian")
    require_symmetric(h, "h (the Hessian)")
    if method in ("eigh", "svd"):
        # the eigenvalues of H itself: the damping is added by the operator
        return spectral_inverse(h, rcond=rcond, damping=damping, method=method)
    a = h.to(torch.float64)
    a = a.clone() if a is h else a
    a.diagonal().add_(damping)
    factor, status = torch.linalg.cholesky_ex(a)
    if int(status) == 0:
        big, small = _lanczos_extremes(a, partial(cholesky_solve, factor), k=1, tol=1e-3)
        largest, smallest = float(big[-1]), float(small[0])
        # pinv keeps every eigenvalue above rcond * lambda_max; when all are (with a margin for the
        # Lanczos estimates) the pseudo-inverse is the inverse, and Cholesky computes it exactly.
        if smallest > 2 * rcond * largest:
            return CholeskyInverse(factor, damping, rcond, largest, smallest)
    if method == "cholesky":
        raise InterpError(
            "H + damping I is not positive definite (or too ill-conditioned) for Cholesky at this rcond; "
            "use method='eigh' for the pseudo-inverse, or add damping"
        )
    del factor, a
    return spectral_inverse(h, rcond=rcond, damping=damping, method="eigh")


def _lanczos_extremes(a: torch.Tensor, solve, k: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest and ``k`` smallest eigenvalues of symmetric positive definite ``A``, ascending.

    Lanczos (``scipy eigsh``, on the CPU; the products run on ``A``'s device) on ``v -> A v`` and on
    ``v -> solve(v) = A^-1 v``, the smallest being ``1 / lambda_max(A^-1)``: with a Cholesky factor,
    O(P^2) per product and no dense eigendecomposition. Small matrices are decomposed directly.
    """
    from scipy.sparse.linalg import LinearOperator

    p = a.shape[0]
    if p <= max(64, 4 * k):  # ARPACK needs room for its Krylov basis; small matrices are cheap anyway
        w = to_numpy(torch.linalg.eigvalsh(a))
        return w[-k:], w[:k]

    def vec(v):
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(p, -1)).to(a.device)

    forward = LinearOperator((p, p), matvec=lambda v: to_numpy(a @ vec(v)), dtype=np.float64)
    backward = LinearOperator((p, p), matvec=lambda v: to_numpy(solve(vec(v))), dtype=np.float64)
    largest = np.sort(_top_eigenvalues(forward, k, tol))
    inv_largest = _top_eigenvalues(backward, k, tol)
    return largest, np.sort(1.0 / inv_largest[inv_largest > 0])


def _top_eigenvalues(op, k: int, tol: float) -> np.ndarray:
    """ARPACK's ``k`` largest eigenvalues of ``op``, or the ones it converged to where it stops short (a cluster of
    equal eigenvalues, such as a damped head Hessian's null directions all at the damping, can stall it)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    try:
        ncv = max(16, 2 * k + 1)
        return eigsh(op, k=k, which="LA", return_eigenvectors=False, tol=tol, ncv=ncv, v0=arpack_start(op.shape[0]))
    except ArpackNoConvergence as err:
        if len(err.eigenvalues) == 0:
            raise InterpError(f"Lanczos found none of the {k} largest eigenvalues ({err}); raise the damping") from None
        return np.asarray(err.eigenvalues, dtype=np.float64).real


# up to this many parameters the spectrum's ends come from a dense eigendecomposition (3.5 s for 4,096 on one core):
# ARPACK on the inverse of a damped head Hessian, whose null directions are one eigenvalue (the damping) hundreds of
# times over, took 25-37 s for 650 parameters and once stopped unconverged (19 of 20)
DENSE_SPECTRUM_UP_TO = 4096


def extreme_eigenvalues(h: torch.Tensor, inv: InverseOperator, k: int = 20) -> dict:
    """The ``k`` largest eigenvalues of ``H`` and its ``k`` smallest kept: by a dense eigendecomposition up to
    :data:`DENSE_SPECTRUM_UP_TO` parameters, by Lanczos above, which finds a repeated eigenvalue once or a few times
    rather than with its multiplicity (and returns fewer than ``k`` where it stops short).

    ``h`` is the undamped matrix; ``inv`` its factorisation (damping included). Returns
    ``{"largest": (k,), "smallest": (k,)}`` ascending.
    """
    if h.shape[0] <= DENSE_SPECTRUM_UP_TO:
        w = to_numpy(torch.linalg.eigvalsh(h.to(torch.float64)))
        return {"largest": w[-k:], "smallest": w[:k]}
    largest, smallest_damped = _lanczos_extremes(h.to(torch.float64), inv.apply, k, tol=1e-6)
    # eigenvalues of H + damping I, less the damping: the spectrum of H itself
    return {"largest": largest, "smallest": smallest_damped - inv.damping}


def _dense(method: str):
    def build(curvature: Curvature, *, rcond=None, damping: float = 0.0, progress: bool = False) -> InverseOperator:
        return pseudo_inverse(curvature.matrix, rcond=rcond, damping=damping, method=method)

    return build


for _entry in (
    InverseMethod("auto", _dense("auto"), shared="eigh",
                  help="Cholesky when Lanczos shows no eigenvalue would be cut, else eigh (the dense Hessian)"),
    InverseMethod("cholesky", _dense("cholesky"), help="H + damping I = L L^T; positive definite only, no cut-off"),
    InverseMethod("eigh", _dense("eigh"), shared="eigh", help="eigendecomposition, eigenvalues under the cut-off dropped"),
    InverseMethod("svd", _dense("svd"), shared="svd", help="SVD, as scipy.linalg.pinv"),
):  # fmt: skip
    INVERSES.register(_entry)

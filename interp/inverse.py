"""Inverses of symmetric PSD curvature matrices: one protocol, several methods.

Every method is an :class:`InverseOperator` with ``apply(b) = (H + damping I)^+ b`` and ``info()``
(JSON-ready facts: method, rank kept, cut-off, spectrum dropped, residuals), so that
:func:`interp.influence_matrix` serves all of them and a new method (LiSSA, Arnoldi, EK-FAC) is one
more class:

* :class:`SpectralInverse` (``eigh`` or ``svd``): ``H = V diag(w) V^T``; eigenvalues with
  ``|w + damping| <= rcond * max|w + damping|`` are dropped. With ``svd`` the rule is on singular
  values, exactly ``scipy.linalg.pinv(H + damping I, rtol=rcond)``. One factorisation serves every
  cut-off and damping (:meth:`SpectralInverse.with_settings`), as the eigenvectors do not change.
* :class:`CholeskyInverse`: ``H + damping I = L L^T``, no cut-off; positive definite matrices only,
  about 1/25 of the work of an eigendecomposition.
* :class:`ConjugateGradientInverse`: matrix-free, from Hessian-vector products; started from zero it
  converges to the minimum-norm (pseudo-inverse) solution for right-hand sides in the range of ``H``.

:func:`pseudo_inverse` factorises a dense matrix: ``auto`` takes Cholesky when Lanczos shows that no
eigenvalue would fall under the cut-off, else eigh.

The cut-off ``rcond`` is relative to the largest eigenvalue. Named choices (:func:`resolve_rcond`):
``exact`` = ``P * eps(float64)``, the default of ``scipy.linalg.pinv`` (``atol + rtol * max``
with ``rtol = max(M, N) * eps``) and of ``numpy.linalg.matrix_rank``; ``numpy.linalg.pinv``'s own
default is the smaller ``1e-15`` (nothing but round-off is dropped either way; the API's default);
``paper`` = ``0.05``, what the paper's code used (``scipy.linalg.pinv2(H, rcond=5e-2)``: singular
values below 5% of the largest dropped).

All work happens on the device of ``H`` (a GPU factorises on the GPU); ``apply`` returns float64 on
that device.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.device import to_numpy
from interp.errors import InterpError, require_finite, require_symmetric, require_tensor

METHODS = ("auto", "cholesky", "eigh", "svd")
PAPER_RCOND = 0.05
NAMED_RCOND = {
    "paper": "0.05 x the largest singular value, as the paper's code (scipy.linalg.pinv2(H, rcond=5e-2))",
    "exact": "P x float64 eps x the largest, the default of scipy.linalg.pinv (numpy.linalg.pinv uses 1e-15)",
}


def default_rcond(p: int) -> float:
    return p * float(np.finfo(np.float64).eps)


def resolve_rcond(rcond: float | str | None, p: int) -> float:
    """A cut-off as a number: ``None`` or ``"exact"`` -> ``P * eps``; ``"paper"`` -> 0.05; numbers checked."""
    if rcond is None or rcond == "exact":
        return default_rcond(p)
    if rcond == "paper":
        return PAPER_RCOND
    if isinstance(rcond, str):
        raise InterpError(f"rcond must be a number in [0, 1), 'paper' or 'exact', got {rcond!r}")
    if not (np.isfinite(rcond) and 0 <= rcond < 1):
        raise InterpError(f"rcond must be a finite number in [0, 1), got {rcond}")
    return float(rcond)


def _check_damping(damping: float) -> None:
    if not (np.isfinite(damping) and damping >= 0):
        raise InterpError(f"damping must be a finite number >= 0, got {damping}")


class InverseOperator(ABC):
    """``(H + damping I)^+`` as an operator on vectors ``(P,)`` or blocks of columns ``(P, k)``."""

    method: str
    size: int
    damping: float

    @abstractmethod
    def apply(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^+ b``, float64, on the operator's device."""

    @abstractmethod
    def info(self) -> dict:
        """JSON-ready facts about the operator (method, size, rank kept, cut-off, residuals...)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.size

    def spectrum(self) -> np.ndarray | None:
        """Every eigenvalue of ``H`` (damping not added), ascending, where the method has them; else None."""
        return None

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        """Share of the gradients' squared norm in directions the operator drops (0 for a full inverse)."""
        return 0.0

    def with_settings(self, *, rcond: float | str | None = "same", damping: float | None = None):
        """The same factorisation under another cut-off and/or damping, where the method allows it; else None."""
        return None

    def _columns(self, b: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if b.shape[0] != self.size:
            raise InterpError(
                f"the operator is {self.size} x {self.size}; got a right-hand side of shape {tuple(b.shape)}"
            )
        return b.to(self.device, torch.float64).reshape(self.size, -1), b.dim() == 1


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

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        cols, vec = self._columns(b)
        out = cholesky_solve(self.factor, cols)
        return out.flatten() if vec else out

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
class SpectralInverse(InverseOperator):
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
        _check_damping(self.damping)
        self.rcond = resolve_rcond(self.rcond, self.size)

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
        return float(self._shifted.abs().max()) if self.size else 0.0

    @property
    def cutoff(self) -> float:
        return self.rcond * self.largest

    @cached_property
    def kept(self) -> torch.Tensor:
        """Boolean mask of the eigen-directions kept, ``(P,)``."""
        return self._shifted.abs() > self.cutoff

    @property
    def rank(self) -> int:
        return int(self.kept.sum())

    @cached_property
    def _basis(self) -> torch.Tensor:
        return self.eigenvectors[:, self.kept]

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        cols, vec = self._columns(b)
        scale = 1.0 / self._shifted[self.kept]
        out = self._basis @ (scale.unsqueeze(1) * (self._basis.T @ cols))
        return out.flatten() if vec else out

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

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        """Share of ``sum_i ||g_i||^2`` in the dropped directions: ``1 - ||G V_kept||_F^2 / ||G||_F^2``.

        ``g`` ``(n, P)``: gradients in the operator's coordinates. 0 when nothing that matters is
        dropped; near 1 when the cut-off throws the gradients away.
        """
        g = g.to(self.device, torch.float64)
        total = float((g * g).sum())
        if total == 0:
            return 0.0
        return max(0.0, 1.0 - float(((g @ self._basis) ** 2).sum()) / total)

    def info(self) -> dict:
        shifted = self._shifted
        kept, dropped = shifted[self.kept], shifted[~self.kept]
        return {
            "method": self.method,
            "size": self.size,
            "rank_kept": self.rank,
            "rcond": self.rcond,
            "cutoff": self.cutoff,
            "damping": self.damping,
            "largest_eigenvalue": self.largest,
            "smallest_kept_eigenvalue": float(kept.abs().min()) if len(kept) else 0.0,
            "n_dropped": int(len(dropped)),
            "dropped_eigenvalues_max_abs": float(dropped.abs().max()) if len(dropped) else 0.0,
        }


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
        _check_damping(self.damping)
        if not 0 < self.tol < 1 or self.max_iter < 1 or self.chunk < 1:
            raise InterpError(
                f"CG needs 0 < tol < 1, max_iter >= 1, chunk >= 1; got {self.tol}, {self.max_iter}, {self.chunk}"
            )

    @property
    def device(self) -> torch.device:
        return torch.device(self.on)

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        cols, vec = self._columns(b)
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
                stacklevel=2,
            )
        return out.flatten() if vec else out

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


def symmetric_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of symmetric float64 ``a``, on its device.

    On the CPU through LAPACK's MRRR driver (``scipy.linalg.eigh(driver="evr")``): on the shipped
    sources' head Hessians it gave pseudo-inverse solutions closer to an extended-precision reference
    than the divide-and-conquer driver behind ``torch.linalg.eigh`` (``tests/interp/test_inverse.py``);
    on CUDA, cuSOLVER's through ``torch.linalg.eigh``.
    """
    if a.device.type != "cpu":
        return torch.linalg.eigh(a)
    import scipy.linalg

    w, v = scipy.linalg.eigh(a.numpy(), driver="evr", check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(v)


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
    _check_damping(damping)
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
    from scipy.sparse.linalg import LinearOperator, eigsh

    p = a.shape[0]
    if p <= max(64, 4 * k):  # ARPACK needs room for its Krylov basis; small matrices are cheap anyway
        w = to_numpy(torch.linalg.eigvalsh(a))
        return w[-k:], w[:k]

    def vec(v):
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(p, -1)).to(a.device)

    forward = LinearOperator((p, p), matvec=lambda v: to_numpy(a @ vec(v)), dtype=np.float64)
    backward = LinearOperator((p, p), matvec=lambda v: to_numpy(solve(vec(v))), dtype=np.float64)
    ncv = max(16, 2 * k + 1)
    largest = np.sort(eigsh(forward, k=k, which="LA", return_eigenvectors=False, tol=tol, ncv=ncv))
    inv_largest = eigsh(backward, k=k, which="LA", return_eigenvectors=False, tol=tol, ncv=ncv)
    return largest, np.sort(1.0 / inv_largest[inv_largest > 0])


def extreme_eigenvalues(h: torch.Tensor, inv: InverseOperator, k: int = 20) -> dict:
    """The ``k`` largest eigenvalues of ``H`` and its ``k`` smallest kept, by Lanczos.

    ``h`` is the undamped matrix; ``inv`` its factorisation (damping included). Returns
    ``{"largest": (k,), "smallest": (k,)}`` ascending.
    """
    largest, smallest_damped = _lanczos_extremes(h.to(torch.float64), inv.apply, k, tol=1e-6)
    # eigenvalues of H + damping I, less the damping: the spectrum of H itself
    return {"largest": largest, "smallest": smallest_damped - inv.damping}


@dataclass(frozen=True)
class Curvature:
    """What an inverse is built from: a dense ``(P, P)`` Hessian, Hessian-vector products ``v -> H v``, or the
    model itself with its training batches and the selected parameter names (methods that build their own
    curvature: the GGN, its blocks, K-FAC, EK-FAC, Arnoldi).

    ``matrix``, ``matvec`` or ``model``/``data``/``params`` are given as the registered method needs
    (:attr:`InverseMethod.needs`);
    ``device`` is where the products run and the operator's results live.
    """

    size: int
    matrix: torch.Tensor | None = None
    matvec: Callable[[torch.Tensor], torch.Tensor] | None = None
    device: torch.device | str = "cpu"
    model: torch.nn.Module | None = None  # needs="model": the network, its training batches and the parameter names
    data: Iterable | None = None
    params: Sequence[str] | None = None


NEEDS = ("dense", "hvp", "model")
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class InverseMethod:
    """A named way to build ``(H + damping I)^+``: one registry entry.

    ``build(curvature, rcond=..., damping=..., **options) -> InverseOperator``. ``needs``: ``"dense"``
    (``curvature.matrix``), ``"hvp"`` (``curvature.matvec``) or ``"model"`` (``curvature.model``, ``data``,
    ``params``). ``cutoff``: whether ``rcond`` applies. ``damped``: whether it needs ``damping > 0``.
    ``shared``: the method that factorises once for several (cut-off, damping) settings (its
    operators answer :meth:`InverseOperator.with_settings`); None builds one operator per setting.
    """

    name: str
    build: Callable[..., InverseOperator]
    needs: str = "dense"
    cutoff: bool = True
    shared: str | None = None
    help: str = ""
    damped: bool = False
    default_rcond: str = "paper"  # the cut-off taken when none is asked for (methods with ``cutoff`` only)

    def __post_init__(self):
        """An entry is checked when it is declared, so a bad one never reaches the registry's callers."""
        if not isinstance(self.name, str) or not _METHOD_NAME.fullmatch(self.name):
            raise InterpError(f"an inverse method's name must be a non-empty string of letters, digits, '_', '-' or "
                              f"'.', starting with a letter or digit; got {self.name!r}")  # fmt: skip
        if not callable(self.build):
            raise InterpError(f"inverse method {self.name!r}: build must be callable "
                              "(curvature, *, rcond, damping, **options) -> InverseOperator; got "
                              f"{type(self.build).__name__}")  # fmt: skip
        if self.needs not in NEEDS:
            raise InterpError(f"inverse method {self.name!r} needs one of {NEEDS} curvature, got {self.needs!r}")
        for flag in ("cutoff", "damped"):
            if not isinstance(getattr(self, flag), bool):
                raise InterpError(f"inverse method {self.name!r}: {flag} must be True or False, "
                                  f"got {getattr(self, flag)!r}")  # fmt: skip
        if self.shared is not None and not (isinstance(self.shared, str) and _METHOD_NAME.fullmatch(self.shared)):
            raise InterpError(f"inverse method {self.name!r}: shared must be None or a method name, got {self.shared!r}")
        if not isinstance(self.help, str):
            raise InterpError(f"inverse method {self.name!r}: help must be a string, got {type(self.help).__name__}")
        resolve_rcond(self.default_rcond, 1)


def _dense(method: str) -> Callable[..., InverseOperator]:
    def build(curvature: Curvature, *, rcond=None, damping: float = 0.0, **_) -> InverseOperator:
        if curvature.matrix is None:
            raise InterpError(f"the {method} inverse needs the dense curvature matrix")
        return pseudo_inverse(curvature.matrix, rcond=rcond, damping=damping, method=method)

    return build


def _cg(curvature: Curvature, *, rcond=None, damping: float = 0.0, tol: float = 1e-10, max_iter: int = 1000,
        progress: bool = False, **_) -> InverseOperator:  # fmt: skip
    if curvature.matvec is None:
        raise InterpError("the cg inverse needs Hessian-vector products (curvature.matvec)")
    return ConjugateGradientInverse(curvature.matvec, curvature.size, damping=damping, tol=tol, max_iter=max_iter,
                                    on=curvature.device, progress=progress)  # fmt: skip


class InverseRegistry:
    """Inverse methods by name. A new method is one :class:`InverseOperator` class and one
    :meth:`register` call (or :func:`interp.register_inverse`); every caller resolves names here."""

    def __init__(self):
        self._methods: dict[str, InverseMethod] = {}

    def register(self, method: InverseMethod, replace: bool = False) -> InverseMethod:
        if not isinstance(method, InverseMethod):
            raise InterpError(f"register takes an InverseMethod, got {type(method).__name__}")
        if method.name in self._methods and not replace:
            raise InterpError(f"an inverse method named {method.name!r} is registered already; pass replace=True")
        self._methods[method.name] = method
        return method

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    def get(self, name: str) -> InverseMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise InterpError(f"unknown inverse method {name!r}; registered: {', '.join(self._methods)}") from None

    def names(self) -> list[str]:
        return list(self._methods)


INVERSES = InverseRegistry()
for _entry in (
    InverseMethod("auto", _dense("auto"), shared="eigh",
                  help="Cholesky when Lanczos shows no eigenvalue would be cut, else eigh"),
    InverseMethod("cholesky", _dense("cholesky"), help="H + damping I = L L^T; positive definite only, no cut-off"),
    InverseMethod("eigh", _dense("eigh"), shared="eigh", help="eigendecomposition, eigenvalues under the cut-off dropped"),
    InverseMethod("svd", _dense("svd"), shared="svd", help="SVD, as scipy.linalg.pinv"),
    InverseMethod("cg", _cg, needs="hvp", cutoff=False,
                  help="conjugate gradient on Hessian-vector products (matrix-free, no cut-off)"),
):  # fmt: skip
    INVERSES.register(_entry)


def register_inverse(name: str, build: Callable[..., InverseOperator], *, needs: str = "dense", cutoff: bool = True,
                     shared: str | None = None, help: str = "", damped: bool = False, default_rcond: str = "paper",
                     replace: bool = False) -> InverseMethod:  # fmt: skip
    """Register an inverse method under ``name`` for :func:`build_inverse` and ``influence --method NAME``.

    ``build(curvature: Curvature, *, rcond, damping, **options) -> InverseOperator``; see
    :class:`InverseMethod` for ``needs``, ``cutoff`` and ``shared``.
    """
    return INVERSES.register(InverseMethod(name, build, needs, cutoff, shared, help, damped, default_rcond),
                             replace=replace)


def build_inverse(name: str, curvature: Curvature, *, rcond=None, damping: float = 0.0, **options) -> InverseOperator:
    """``(H + damping I)^+`` by the registered method ``name``."""
    return INVERSES.get(name).build(curvature, rcond=rcond, damping=damping, **options)

"""How the curvature is inverted: the protocol and the registry (:mod:`interp.inverses.base`), and the methods, each
module registering its own entries: dense Cholesky, eigh and SVD (``auto``, ``cholesky``, ``eigh``, ``svd``),
conjugate gradient (``cg``), the exact GGN and its layer blocks (``ggn``, ``blockdiag``), K-FAC and EK-FAC
(``kfac``, ``ekfac``), Arnoldi (``arnoldi``), conjugate gradients on the exact GGN preconditioned by EK-FAC
(``refined``); the low-rank (Woodbury) inverse serves the Kronecker methods'
fallback."""

# isort: off
# each module registers its methods, in this order (the order --method lists them)
from interp.inverses import dense, cg, exact, kronecker, arnoldi, refined  # noqa: F401

# isort: on
from interp.inverses.arnoldi import ARNOLDI_RANK, ArnoldiInverse, ArnoldiOptions, arnoldi_inverse, deflated_trace
from interp.inverses.base import (
    INVERSES,
    NAMED_RCOND,
    PAPER_RCOND,
    Curvature,
    InverseMethod,
    InverseOperator,
    InverseRegistry,
    build_inverse,
    default_rcond,
    register_inverse,
    resolve_rcond,
)
from interp.inverses.cg import CGOptions, ConjugateGradientInverse, conjugate_gradient
from interp.inverses.dense import (
    METHODS,
    CholeskyInverse,
    SpectralInverse,
    cholesky_solve,
    extreme_eigenvalues,
    pseudo_inverse,
    spectral_inverse,
)
from interp.inverses.eigen import EigenbasisInverse, symmetric_eigh
from interp.inverses.exact import BlockDiagonalInverse
from interp.inverses.kronecker import (
    FISHER_DEFAULT,
    FISHER_TYPES,
    KroneckerInverse,
    KroneckerOptions,
    kronecker_coverage,
    kronecker_inverse,
)
from interp.inverses.lowrank import LowRankInverse, lowrank_inverse
from interp.inverses.refined import DeflationPreconditioner, RefinedOptions

__all__ = [
    "ARNOLDI_RANK",
    "FISHER_DEFAULT",
    "FISHER_TYPES",
    "INVERSES",
    "METHODS",
    "NAMED_RCOND",
    "PAPER_RCOND",
    "RefinedOptions",
    "ArnoldiInverse",
    "ArnoldiOptions",
    "BlockDiagonalInverse",
    "CGOptions",
    "CholeskyInverse",
    "ConjugateGradientInverse",
    "Curvature",
    "DeflationPreconditioner",
    "EigenbasisInverse",
    "InverseMethod",
    "InverseOperator",
    "InverseRegistry",
    "KroneckerInverse",
    "KroneckerOptions",
    "LowRankInverse",
    "SpectralInverse",
    "arnoldi_inverse",
    "build_inverse",
    "cholesky_solve",
    "conjugate_gradient",
    "default_rcond",
    "deflated_trace",
    "extreme_eigenvalues",
    "kronecker_coverage",
    "kronecker_inverse",
    "lowrank_inverse",
    "pseudo_inverse",
    "register_inverse",
    "resolve_rcond",
    "spectral_inverse",
    "symmetric_eigh",
]

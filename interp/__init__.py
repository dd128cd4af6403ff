"""Influence functions and explanations for any PyTorch classifier.

Works on any ``nn.Module`` that maps a batch to logits and any iterable of ``(x, y)`` batches;
it does not depend on ``transfer``. Sign convention (Koh & Liang's ``I_up,loss``)::

    I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j      (H: Hessian of the MEAN training loss)

negative = helpful: up-weighting training point j lowers test point i's loss.
"""

import interp.curvature_methods  # noqa: F401  (registers ggn, blockdiag, kfac, ekfac, arnoldi)
from interp.arnoldi import ArnoldiInverse, arnoldi_inverse
from interp.blockdiag import BlockDiagonalInverse
from interp.device import model_device
from interp.errors import InterpError
from interp.featviz import FeatVizConfig, FeatVizResult, noise_seeds, visualize
from interp.ggn import ggn, ggn_blocks, ggn_vector_product
from interp.grads import per_example_grads
from interp.head import head_features, head_influence, linear_head_grads, linear_head_hessian
from interp.hessian import hessian
from interp.influence import hessian_vector_product, influence_matrix
from interp.inverse import (
    INVERSES,
    CholeskyInverse,
    ConjugateGradientInverse,
    Curvature,
    InverseMethod,
    InverseOperator,
    SpectralInverse,
    build_inverse,
    conjugate_gradient,
    pseudo_inverse,
    register_inverse,
    resolve_rcond,
)
from interp.kronecker import KroneckerInverse, kronecker_inverse
from interp.metrics import ClassMatch, class_match, most_helpful
from interp.saliency import concentration, saliency_maps

__all__ = [
    "ArnoldiInverse",
    "BlockDiagonalInverse",
    "KroneckerInverse",
    "arnoldi_inverse",
    "ggn",
    "ggn_blocks",
    "ggn_vector_product",
    "kronecker_inverse",
    "INVERSES",
    "CholeskyInverse",
    "ClassMatch",
    "ConjugateGradientInverse",
    "Curvature",
    "FeatVizConfig",
    "FeatVizResult",
    "InterpError",
    "InverseMethod",
    "InverseOperator",
    "SpectralInverse",
    "build_inverse",
    "class_match",
    "concentration",
    "conjugate_gradient",
    "head_features",
    "head_influence",
    "hessian",
    "hessian_vector_product",
    "influence_matrix",
    "linear_head_grads",
    "linear_head_hessian",
    "model_device",
    "most_helpful",
    "noise_seeds",
    "per_example_grads",
    "pseudo_inverse",
    "register_inverse",
    "resolve_rcond",
    "saliency_maps",
    "visualize",
]

"""Influence functions and explanations for any PyTorch classifier.

Works on any ``nn.Module`` that maps a batch to logits and any iterable of ``(x, y)`` batches; it does not depend on
``transfer``. Sign convention (Koh & Liang's ``I_up,loss``)::

    I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j      (H: Hessian of the MEAN training loss)

negative = helpful: up-weighting training point j lowers test point i's loss.

Three rooms, each with its own face: :mod:`interp.curvature` (what ``H`` is: gradients, Hessians and their products,
the GGN, the head's closed forms, parameter selection, memory), :mod:`interp.inverses` (how it is inverted: the
registry of methods) and :mod:`interp.viz` (feature visualisation, saliency, figures). Influence, class-match
metrics, leave-one-out, the PBRF, the device rule and the error type stay at the top; this module re-exports the verbs a user
calls.
"""

from interp import _moved
from interp.curvature import (
    CurvatureProducts,
    ggn,
    ggn_blocks,
    ggn_vector_product,
    head_features,
    hessian,
    hessian_vector_product,
    linear_head_grads,
    linear_head_hessian,
    per_example_grad_batches,
    per_example_grads,
    select_params,
)
from interp.device import model_device, to_numpy
from interp.errors import InterpError
from interp.influence import (
    NORMALIZE,
    NORMALIZE_HELP,
    head_influence,
    influence_matrix,
    influence_pair,
    streamed_influence,
)
from interp.inverses import (
    INVERSES,
    ArnoldiInverse,
    BlockDiagonalInverse,
    CholeskyInverse,
    ConjugateGradientInverse,
    Curvature,
    InverseMethod,
    InverseOperator,
    KroneckerInverse,
    SpectralInverse,
    arnoldi_inverse,
    build_inverse,
    conjugate_gradient,
    kronecker_inverse,
    pseudo_inverse,
    register_inverse,
    resolve_rcond,
)
from interp.loo import gradient_norm, leave_one_out, refit_head
from interp.metrics import (
    ClassMatch,
    bootstrap_interval,
    class_match,
    most_helpful,
    paired_difference,
    ranking_agreement,
)
from interp.pbrf import pbrf_response, pbrf_whitening
from interp.viz import FeatVizConfig, FeatVizResult, concentration, noise_seeds, saliency_maps, visualize

_moved.install()

__all__ = [
    "INVERSES",
    "NORMALIZE",
    "NORMALIZE_HELP",
    "ArnoldiInverse",
    "BlockDiagonalInverse",
    "CholeskyInverse",
    "ClassMatch",
    "ConjugateGradientInverse",
    "Curvature",
    "CurvatureProducts",
    "FeatVizConfig",
    "FeatVizResult",
    "InterpError",
    "InverseMethod",
    "InverseOperator",
    "KroneckerInverse",
    "SpectralInverse",
    "arnoldi_inverse",
    "bootstrap_interval",
    "build_inverse",
    "class_match",
    "concentration",
    "conjugate_gradient",
    "ggn",
    "ggn_blocks",
    "ggn_vector_product",
    "gradient_norm",
    "head_features",
    "head_influence",
    "hessian",
    "hessian_vector_product",
    "influence_matrix",
    "influence_pair",
    "kronecker_inverse",
    "leave_one_out",
    "linear_head_grads",
    "linear_head_hessian",
    "model_device",
    "most_helpful",
    "noise_seeds",
    "paired_difference",
    "pbrf_response",
    "pbrf_whitening",
    "per_example_grad_batches",
    "per_example_grads",
    "pseudo_inverse",
    "ranking_agreement",
    "refit_head",
    "register_inverse",
    "resolve_rcond",
    "saliency_maps",
    "select_params",
    "streamed_influence",
    "to_numpy",
    "visualize",
]

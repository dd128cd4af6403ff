"""Influence functions and explanations for any PyTorch classifier.

Works on any ``nn.Module`` that maps a batch to logits and any iterable of ``(x, y)`` batches;
it does not depend on ``transfer``. Sign convention (Koh & Liang's ``I_up,loss``)::

    I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j      (H: Hessian of the MEAN training loss)

negative = helpful: up-weighting training point j lowers test point i's loss.
"""

from interp.errors import InterpError
from interp.featviz import FeatVizConfig, FeatVizResult, noise_seeds, visualize
from interp.grads import head_features, linear_head_grads, per_example_grads
from interp.hessian import hessian, linear_head_hessian
from interp.influence import (
    conjugate_gradient,
    head_influence,
    hessian_vector_product,
    influence_matrix,
    influence_matrix_cg,
)
from interp.inverse import PseudoInverse, pseudo_inverse
from interp.metrics import ClassMatch, class_match, most_helpful
from interp.saliency import concentration, saliency_maps

__all__ = [
    "ClassMatch",
    "FeatVizConfig",
    "FeatVizResult",
    "InterpError",
    "PseudoInverse",
    "class_match",
    "concentration",
    "conjugate_gradient",
    "head_features",
    "head_influence",
    "hessian",
    "hessian_vector_product",
    "influence_matrix",
    "influence_matrix_cg",
    "linear_head_grads",
    "linear_head_hessian",
    "most_helpful",
    "noise_seeds",
    "per_example_grads",
    "pseudo_inverse",
    "saliency_maps",
    "visualize",
]

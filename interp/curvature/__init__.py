"""What the curvature is: per-example gradients, the Hessian and its products, the exact GGN (dense, per block, as a
factor or as products), the closed forms of a softmax head, which parameters are selected, and how much memory a
dense matrix may take."""

from interp.curvature.ggn import (
    DeviceData,
    curvlinops_model,
    factor_rows,
    ggn,
    ggn_blocks,
    ggn_factor,
    ggn_products,
    ggn_vector_product,
    layer_blocks,
)
from interp.curvature.grads import as_eval_copy, per_example_grad_batches, per_example_grads
from interp.curvature.head import (
    ReducedHead,
    folded_to_canonical,
    head_features,
    linear_head_grads,
    linear_head_hessian,
    reduce_head,
    reduced_to_folded,
)
from interp.curvature.hessian import hessian, hessian_vector_product
from interp.curvature.memory import available_bytes, check_dense_fits, check_fits, device_free_bytes
from interp.curvature.params import ParamSpec, fixed_tensors, flat_positions, flat_size, select_params
from interp.curvature.products import CurvatureProducts

__all__ = [
    "CurvatureProducts",
    "DeviceData",
    "ParamSpec",
    "ReducedHead",
    "as_eval_copy",
    "available_bytes",
    "check_dense_fits",
    "check_fits",
    "curvlinops_model",
    "device_free_bytes",
    "factor_rows",
    "fixed_tensors",
    "flat_positions",
    "flat_size",
    "folded_to_canonical",
    "ggn",
    "ggn_blocks",
    "ggn_factor",
    "ggn_products",
    "ggn_vector_product",
    "head_features",
    "hessian",
    "hessian_vector_product",
    "layer_blocks",
    "linear_head_grads",
    "linear_head_hessian",
    "per_example_grad_batches",
    "per_example_grads",
    "reduce_head",
    "reduced_to_folded",
    "select_params",
]

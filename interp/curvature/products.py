"""Curvature products: ``v -> G v`` for a curvature that is never formed, as one type with its size and description.

What :func:`interp.hessian_vector_product`, :func:`interp.curvature.ggn_products` and
:func:`interp.curvature.ggn_vector_product` return, and what the matrix-free inverses (conjugate gradient, Arnoldi)
take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class CurvatureProducts:
    """``v -> G v`` on columns ``(P, k) -> (P, k)`` (float64 results on ``device``) for a ``P x P`` curvature ``G``.

    Callable like the product itself, and unpacks as ``(matvec, P)``, as :func:`interp.hessian_vector_product`'s
    result did before it had a type. ``description`` says how the products are taken; ``factor``, where the products
    go through a cached factor ``F`` ``(m, P)`` with ``G = F^T F``, is that factor (a consumer may use it whole).
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    size: int
    device: torch.device
    dtype: torch.dtype = torch.float64
    description: str = ""
    factor: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def __iter__(self) -> Iterator:
        yield self
        yield self.size

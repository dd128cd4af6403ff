"""The inverse methods that build their own curvature from the model: registry entries (``needs="model"``).

* ``ggn``: the exact GGN (:mod:`interp.ggn`), dense, its pseudo-inverse by eigh with the cut-off; the
  ground truth of the three approximations below, where it fits.
* ``blockdiag``: the exact GGN per layer block (:mod:`interp.blockdiag`).
* ``kfac`` / ``ekfac``: curvlinops' Kronecker factorisations (:mod:`interp.kronecker`), damping > 0.
* ``arnoldi``: the top ``rank`` eigenpairs of the GGN from products (:mod:`interp.arnoldi`), with a cut-off.

The exact methods and Arnoldi default to the ``exact`` cut-off (``P * eps``): the paper's 5% cut-off belongs to
the head's Hessian, and a method that exists to be the exact reference must not apply it unasked.
"""

from __future__ import annotations

import torch

from interp.arnoldi import arnoldi_inverse
from interp.blockdiag import BlockDiagonalInverse
from interp.errors import InterpError
from interp.ggn import ggn_blocks, ggn_products, layer_blocks
from interp.influence import hessian_vector_product
from interp.inverse import INVERSES, Curvature, InverseMethod, spectral_inverse
from interp.kronecker import FISHER_DEFAULT, kronecker_inverse
from interp.params import flat_positions, select_params

ARNOLDI_RANK = 200  # the default r: on the tests' 2,954-parameter selection it reaches top-10 overlap ~0.76


def _model_parts(curvature: Curvature, method: str):
    """The model, its batches and the selected names, each once in ``named_parameters`` order (the layout of the
    per-example gradients; overlapping paths such as ``layer3.1`` and ``layer3.1.conv2`` name a tensor once)."""
    if curvature.model is None or curvature.data is None or curvature.params is None:
        raise InterpError(f"the {method} inverse needs the model, its training batches and the parameter names")
    return curvature.model, curvature.data, list(select_params(curvature.model, list(curvature.params)))


def _ggn(curvature: Curvature, *, rcond="exact", damping: float = 0.0, progress: bool = False, **_):
    model, data, names = _model_parts(curvature, "ggn")
    (g,) = ggn_blocks(model, data, names, None, device=curvature.device, progress=progress)
    inv = spectral_inverse(g, rcond=rcond, damping=damping, method="eigh")
    inv.method = "ggn"  # an eigh pseudo-inverse of the GGN; with_settings keeps the name
    return inv


def _blockdiag(curvature: Curvature, *, rcond="exact", damping: float = 0.0, progress: bool = False, **_):
    model, data, names = _model_parts(curvature, "blockdiag")
    groups = layer_blocks(model, names)
    blocks = ggn_blocks(model, data, names, groups, device=curvature.device, progress=progress)
    pos = flat_positions(model, names)
    index = [torch.cat([pos[n] for n in g]).to(curvature.device) for g in groups]
    inverses = [spectral_inverse(b, rcond=rcond, damping=damping, method="eigh") for b in blocks]
    return BlockDiagonalInverse(inverses, index, groups, sum(len(i) for i in index))


def _kronecker(kind: str):
    def build(curvature: Curvature, *, rcond=None, damping: float = 0.0, progress: bool = False,
              fisher: str = FISHER_DEFAULT, mc_samples: int = 1, **_):  # fmt: skip
        model, data, names = _model_parts(curvature, kind)
        return kronecker_inverse(model, data, names, kind=kind, damping=damping, fisher_type=fisher,
                                 mc_samples=mc_samples, device=curvature.device, progress=progress)  # fmt: skip

    return build


def _arnoldi(curvature: Curvature, *, rcond="exact", damping: float = 0.0, rank: int = ARNOLDI_RANK,
             arnoldi_curvature: str = "ggn", **_):  # fmt: skip
    model, data, names = _model_parts(curvature, "arnoldi")
    if arnoldi_curvature not in ("ggn", "hessian"):
        raise InterpError(f"arnoldi_curvature must be ggn or hessian, got {arnoldi_curvature!r}")
    if arnoldi_curvature == "ggn":
        matvec, size, how = ggn_products(model, data, names, device=curvature.device)
    else:
        (matvec, size), how = hessian_vector_product(model, data, names, device=curvature.device), "Hessian-vector products"
    return arnoldi_inverse(matvec, size, rank=rank, damping=damping, rcond=rcond,
                           curvature=f"{arnoldi_curvature}: {how}", device=curvature.device)  # fmt: skip


for _entry in (
    InverseMethod("ggn", _ggn, needs="model", shared="ggn", default_rcond="exact",
                  help="the exact Gauss-Newton matrix, dense, eigenvalues under the cut-off dropped"),
    InverseMethod("blockdiag", _blockdiag, needs="model", shared="blockdiag", default_rcond="exact",
                  help="the exact GGN per layer block (cross-layer terms dropped), each block's pseudo-inverse"),
    InverseMethod("kfac", _kronecker("kfac"), needs="model", cutoff=False, shared="kfac", damped=True,
                  help="K-FAC of the GGN (curvlinops), Linear and Conv2d; other parameters by their exact GGN block"),
    InverseMethod("ekfac", _kronecker("ekfac"), needs="model", cutoff=False, shared="ekfac", damped=True,
                  help="EK-FAC of the GGN (curvlinops), Linear and Conv2d; other parameters by their exact GGN block"),
    InverseMethod("arnoldi", _arnoldi, needs="model", shared="arnoldi", default_rcond="exact",
                  help="the top --arnoldi-rank eigenpairs of the GGN from products (Lanczos), inverted in that subspace "
                  "above the cut-off"),
):  # fmt: skip
    INVERSES.register(_entry)

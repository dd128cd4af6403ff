"""The exact GGN's inverses: the whole GGN, dense (registers ``ggn``), and its per-layer blocks (``blockdiag``).

``ggn`` is the dense exact GGN (:mod:`interp.curvature.ggn`) inverted by eigh with the cut-off: the ground truth of
the approximations (K-FAC, EK-FAC, Arnoldi) where it fits. Its default cut-off is ``exact`` (``P * eps``): the
paper's 5% cut-off belongs to the head's Hessian, and a method that exists to be the exact reference must not
apply it unasked.

``blockdiag`` keeps the exact GGN of each layer's parameters (a layer's weight with its bias) and nothing
between layers: ``(G_1 (+) ... (+) G_L + damping I)^+`` is the direct sum of the blocks' pseudo-inverses,
each with the cut-off ``rcond`` relative to its own largest eigenvalue. Next to K-FAC (which also drops the
cross-layer blocks, then factorises each one) it separates the error of dropping the cross terms from
that of the Kronecker factorisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from interp.curvature.ggn import factor_rows, ggn_blocks, ggn_factor, layer_blocks
from interp.curvature.memory import GGN_ALTERNATIVE, check_fits
from interp.curvature.params import flat_positions, select_params
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator
from interp.inverses.dense import SpectralInverse, spectral_inverse
from interp.inverses.lowrank import LowRankInverse, lowrank_inverse


@dataclass(eq=False)
class BlockDiagonalInverse(InverseOperator):
    """Direct sum of :class:`SpectralInverse` blocks at the flat positions ``index[b]``."""

    blocks: list[SpectralInverse]
    index: list[torch.Tensor]
    names: list[list[str]]
    size: int
    method: str = field(default="blockdiag", init=False)

    @property
    def device(self) -> torch.device:
        return self.blocks[0].device

    @property
    def damping(self) -> float:
        return self.blocks[0].damping

    @property
    def rank(self) -> int:
        return sum(b.rank for b in self.blocks)

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(cols)
        for inv, idx in zip(self.blocks, self.index, strict=True):
            out[idx] = inv.apply(cols[idx])
        return out

    def with_settings(self, *, rcond="same", damping: float | None = None) -> BlockDiagonalInverse:
        blocks = [b.with_settings(rcond=rcond, damping=damping) for b in self.blocks]
        return BlockDiagonalInverse(blocks, self.index, self.names, self.size)

    def spectrum(self) -> np.ndarray:
        """Every eigenvalue of the block-diagonal matrix (the union of the blocks'), ascending."""
        return np.sort(np.concatenate([b.spectrum() for b in self.blocks]))

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        g = g.to(self.device, torch.float64)
        total = float((g * g).sum())
        if total == 0:
            return 0.0
        dropped = sum(b.dropped_norm_share(g[:, idx]) * float((g[:, idx] ** 2).sum())
                      for b, idx in zip(self.blocks, self.index, strict=True))  # fmt: skip
        return dropped / total

    def info(self) -> dict:
        per = [b.info() | {"params": n} for b, n in zip(self.blocks, self.names, strict=True)]
        return {
            "method": "blockdiag",
            "curvature": "GGN, exact per layer block, cross-layer terms dropped",
            "size": self.size,
            "rank_kept": self.rank,
            "n_dropped": sum(p["n_dropped"] for p in per),
            "rcond": per[0]["rcond"],
            "damping": self.damping,
            "largest_eigenvalue": max(p["largest_eigenvalue"] for p in per),
            "blocks": [
                {k: p[k] for k in ("params", "size", "rank_kept", "n_dropped", "largest_eigenvalue")} for p in per
            ],  # fmt: skip
        }


def _ggn(curvature: Curvature, *, rcond, damping: float, progress: bool) -> SpectralInverse | LowRankInverse:
    """The exact GGN's pseudo-inverse: from its ``n C``-row factor by the Woodbury identity where that has fewer rows
    than the ``P`` parameters (a whole fine-tuned block on a few hundred images: a ``P x P`` matrix that would not fit
    is never formed), else from the dense matrix by eigh. Both are exact, with the same cut-off rule."""
    model, data, names = curvature.model, curvature.data, curvature.names()
    rows, p = (
        factor_rows(model, data, names, curvature.device),
        sum(t.numel() for t in select_params(model, names).values()),
    )
    if rows < p:
        check_fits(2.0 * rows * p * 8 + 3.0 * rows * rows * 8, f"the exact GGN's factor ({rows} x {p})",
                   GGN_ALTERNATIVE, device=curvature.device)  # fmt: skip
        inv = lowrank_inverse(ggn_factor(model, data, names, device=curvature.device, progress=progress), damping,
                              rcond=rcond)  # fmt: skip
        inv.method = "ggn"
        inv.solver = f"the exact GGN from its {rows} x {p} factor by the Woodbury identity (rank {rows} < P)"
        return inv
    (g,) = ggn_blocks(model, data, names, None, device=curvature.device, progress=progress)
    inv = spectral_inverse(g, rcond=rcond, damping=damping, method="eigh")
    inv.method = "ggn"  # an eigh pseudo-inverse of the GGN; with_settings keeps the name
    return inv


def _blockdiag(curvature: Curvature, *, rcond, damping: float, progress: bool) -> BlockDiagonalInverse:
    model, names = curvature.model, curvature.names()
    groups = layer_blocks(model, names)
    blocks = ggn_blocks(model, curvature.data, names, groups, device=curvature.device, progress=progress)
    pos = flat_positions(model, names)
    index = [torch.cat([pos[n] for n in g]).to(curvature.device) for g in groups]
    inverses = [spectral_inverse(b, rcond=rcond, damping=damping, method="eigh") for b in blocks]
    return BlockDiagonalInverse(inverses, index, groups, sum(len(i) for i in index))


for _entry in (
    InverseMethod("ggn", _ggn, needs="model", shared="ggn", default_rcond="exact",
                  help="the exact Gauss-Newton matrix, dense, eigenvalues under the cut-off dropped"),
    InverseMethod("blockdiag", _blockdiag, needs="model", shared="blockdiag", default_rcond="exact",
                  help="the exact GGN per layer block (cross-layer terms dropped), each block's pseudo-inverse"),
):  # fmt: skip
    INVERSES.register(_entry)

"""The pseudo-inverse of a block-diagonal curvature: one exact block per layer, the cross-layer terms dropped.

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

from interp.inverse import InverseOperator, SpectralInverse


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

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        cols, vec = self._columns(b)
        out = torch.zeros_like(cols)
        for inv, idx in zip(self.blocks, self.index, strict=True):
            out[idx] = inv.apply(cols[idx])
        return out.flatten() if vec else out

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
            "blocks": [{k: p[k] for k in ("params", "size", "rank_kept", "n_dropped", "largest_eigenvalue")}
                       for p in per],  # fmt: skip
        }

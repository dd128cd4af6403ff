"""The damped inverse of a low-rank PSD matrix from its factor (Woodbury in eigen-form)."""

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.inverses.lowrank import lowrank_inverse


def test_lowrank_inverse_is_the_exact_damped_inverse_and_keeps_its_eigenpairs_across_dampings():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(7, 30, generator=g, dtype=torch.float64)
    f[6] = f[0] + f[1]  # rank 6: a zero eigenvalue of the Gram matrix too
    b = torch.randn(30, 4, generator=g, dtype=torch.float64)
    for damping in (1e-3, 0.5):
        inv = lowrank_inverse(f, 1e-3).with_settings(damping=damping)
        exact = torch.linalg.solve(f.T @ f + damping * torch.eye(30, dtype=torch.float64), b)
        assert torch.allclose(inv.apply(b), exact, rtol=1e-8, atol=1e-8)
        assert torch.allclose(inv.apply(b[:, 0]), exact[:, 0], rtol=1e-8, atol=1e-8)
    assert inv.info()["nonzero_eigenvalues"] == 6 and inv.rank == 30
    np.testing.assert_allclose(inv.spectrum(), np.linalg.eigvalsh((f.T @ f).numpy()), atol=1e-9)
    with pytest.raises(InterpError, match="damping > 0"):
        lowrank_inverse(f, 0.0)

"""The damped inverse of a low-rank PSD matrix from its factor (Woodbury in eigen-form)."""

import numpy as np
import pytest
import torch

import interp
from interp.errors import InterpError
from interp.inverses.lowrank import FactoredBasis, lowrank_inverse


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
    pinv = lowrank_inverse(f, 0.0)  # undamped: the pseudo-inverse, the null space dropped
    assert torch.allclose(pinv.apply(b), torch.linalg.pinv(f.T @ f, hermitian=True) @ b, rtol=1e-8, atol=1e-8)
    assert pinv.rank == 6 and pinv.dropped_norm_share(b.T) > 0
    with pytest.raises(InterpError, match="damping"):
        lowrank_inverse(f, -1.0)


def test_a_cut_off_drops_small_directions_and_the_null_space_with_them():
    g = torch.Generator().manual_seed(1)
    f = (
        torch.randn(5, 20, generator=g, dtype=torch.float64)
        * torch.tensor([10, 1, 1, 0.1, 0.01], dtype=torch.float64)[:, None]
    )
    h = f.T @ f
    for rcond, damping in (("paper", 0.0), ("paper", 1e-3), (1e-3, 1e-2), ("exact", 1e-4)):
        inv = lowrank_inverse(f, damping, rcond=rcond)
        dense = interp.pseudo_inverse(h, rcond=rcond, damping=damping, method="eigh")
        b = torch.randn(20, 3, generator=g, dtype=torch.float64)
        assert inv.rank == dense.rank, (rcond, damping)
        assert torch.allclose(inv.apply(b), dense.apply(b), rtol=1e-7, atol=1e-9), (rcond, damping)
        assert inv.dropped_norm_share(b.T) == pytest.approx(dense.dropped_norm_share(b.T), abs=1e-10)


def test_the_eigenvectors_are_never_formed_and_every_product_with_them_is_the_formed_ones():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(6, 25, generator=g, dtype=torch.float64)
    inv = lowrank_inverse(f, 1e-2)
    v = inv.eigenvectors
    assert isinstance(v, FactoredBasis) and v.shape == (25, 6) and v.T.shape == (6, 25)
    dense = v.dense()
    assert torch.allclose(dense.T @ dense, torch.eye(6, dtype=torch.float64), atol=1e-10)  # orthonormal
    assert torch.allclose(dense @ torch.diag(inv.eigenvalues) @ dense.T, f.T @ f, atol=1e-10)  # G's eigenpairs
    y, x = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 25, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.allclose(v @ y, dense @ y) and torch.allclose(v.T @ x.T, dense.T @ x.T)
    assert torch.allclose(x @ v, x @ dense) and torch.allclose(y.T @ v.T, y.T @ dense.T)
    assert torch.allclose(v[:, mask].dense(), dense[:, mask]) and torch.allclose(v.T.dense(), dense.T)
    with pytest.raises(IndexError, match="columns"):
        v[:3]
    with pytest.raises(IndexError, match="columns"):
        v.T[:, mask]

"""Arnoldi: the top eigenspace against a dense eigendecomposition, its cut-off and the trace it leaves out."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from interp import InterpError
from interp.curvature import ggn, ggn_products
from interp.inverses import arnoldi_inverse


def test_arnoldi_at_full_rank_is_the_exact_pseudo_inverse_and_below_it_the_top_subspace(digits, small_net, exact_inverse):
    train, _ = digits
    net = small_net()
    names = ["0.weight", "0.bias"]
    g = ggn(net, train, names)
    matvec = lambda v: g @ v  # noqa: E731
    v = torch.randn(len(g), 4, dtype=torch.float64)
    full = arnoldi_inverse(matvec, len(g), rank=len(g), damping=1e-3)
    assert full.info()["solver"].startswith("dense") and full.rank == len(g)
    assert torch.allclose(full.apply(v), exact_inverse(g, 1e-3) @ v, rtol=1e-8, atol=1e-8)
    w, q = torch.linalg.eigh(g)
    r = 12
    top = arnoldi_inverse(matvec, len(g), rank=r, damping=1e-3, tol=1e-12)
    qr, wr = q[:, -r:], w[-r:]
    assert torch.allclose(top.apply(v), qr @ ((qr.T @ v) / (wr + 1e-3)[:, None]), rtol=1e-6, atol=1e-8)
    info = top.info()
    assert info["rank_kept"] == r and info["solver"].startswith("Lanczos")
    assert 0 < info["captured_trace_share"] <= 1
    assert abs(info["largest_eigenvalue"] - float(w[-1])) < 1e-8
    with pytest.raises(InterpError, match="rank"):
        arnoldi_inverse(matvec, len(g), rank=0)


def test_arnoldi_past_the_numerical_rank_at_no_damping_is_the_exact_pseudo_inverse(digits, small_net, names):
    """Asking for more eigenpairs than the GGN's numerical rank at damping 0: the round-off eigenvalues are cut
    (``exact``: P * eps relative), not inverted."""
    x, y = next(iter(digits[0]))
    few = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)  # 8 images x 10 classes: rank <= 72 of 2,610
    net = small_net()
    g = ggn(net, few, names)
    p = len(g)
    pinv = torch.linalg.pinv(g, rtol=p * np.finfo(np.float64).eps, hermitian=True)
    v = torch.randn(p, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inv = arnoldi_inverse(lambda q: g @ q, p, rank=100, damping=0.0)
    info = inv.info()
    assert info["solver"].startswith("Lanczos") and info["rcond"] == p * np.finfo(np.float64).eps
    assert inv.rank <= 72 and info["dropped_in_subspace"] == 100 - inv.rank
    ref = pinv @ v
    assert float((inv.apply(v) - ref).abs().max()) < 1e-8 * float(ref.abs().max())
    assert info["captured_trace_share"] == pytest.approx(1.0, abs=1e-9)  # every nonzero eigenvalue was found
    with pytest.raises(InterpError, match="damping"):
        arnoldi_inverse(lambda q: g @ q, p, rank=10, damping=-1.0)


def test_arnoldi_reports_the_trace_it_leaves_out_with_its_standard_error(digits, small_net, names):
    train, _ = digits
    net = small_net()
    g = ggn(net, train, names)
    w = torch.linalg.eigvalsh(g)
    inv = arnoldi_inverse(lambda q: g @ q, len(g), rank=30, damping=1e-3)
    info = inv.info()
    exact = float(w[-30:].sum() / w.clamp_min(0).sum())
    se = info["captured_trace_share_standard_error"]
    assert 0 < se < 0.05 and abs(info["captured_trace_share"] - exact) < 4 * se + 1e-6
    assert info["trace_found"] == pytest.approx(float(w[-30:].sum()), rel=1e-8)


def test_arnoldi_without_the_trace_estimate_finds_the_same_eigenpairs_with_fewer_products(digits, small_net, names):
    train, _ = digits
    g = ggn(small_net(), train, names)
    calls = []

    def counted(q):
        calls.append(q.shape[1])
        return g @ q

    full = arnoldi_inverse(counted, len(g), rank=30, damping=1e-3)
    with_trace = sum(calls)
    calls.clear()
    bare = arnoldi_inverse(counted, len(g), rank=30, damping=1e-3, trace=False)
    assert sum(calls) == bare.info()["products"] and with_trace == full.info()["products"] == sum(calls) + 16
    assert bare.info()["captured_trace_share"] is None and bare.trace_rest is None
    assert torch.allclose(bare.eigenvalues, full.eigenvalues, rtol=1e-8, atol=0)


def test_arnoldi_assembles_the_matrix_where_lanczos_would_span_the_whole_space():
    torch.manual_seed(0)
    a = torch.randn(40, 40, dtype=torch.float64)
    g = a @ a.T
    inv = arnoldi_inverse(lambda q: g @ q, 40, rank=25, damping=0.0)  # 2r + 1 >= P
    assert inv.info()["solver"].startswith("dense") and "whole space" in inv.info()["solver"]
    assert inv.info()["products"] == 40 and inv.rank == 25
    w, q = torch.linalg.eigh(g)
    top = q[:, -25:]
    v = torch.randn(40, 3, dtype=torch.float64)
    assert torch.allclose(inv.apply(v), top @ ((top.T @ v) / w[-25:, None]), rtol=1e-9, atol=1e-12)
    assert inv.info()["captured_trace_share"] == pytest.approx(float(w[-25:].sum() / w.sum()), rel=1e-10)


def test_arnoldi_takes_the_top_eigenpairs_of_a_cached_factor_from_its_gram_matrix_as_lanczos_finds_them(
    digits, small_net, names
):
    """Products through a cached GGN factor (fewer rows than parameters): the top eigenpairs come from the Gram
    matrix, exactly, the same as Lanczos on the same products, and the trace left out is exact."""
    x, y = next(iter(digits[0]))
    few = DataLoader(TensorDataset(x[:12], y[:12]), batch_size=12)  # 120 factor rows, 2,610 parameters
    products = ggn_products(small_net(), few, names, max_bytes=1 << 40)
    f = products.factor
    assert f is not None and f.shape[0] == 120 < products.size
    gram = arnoldi_inverse(products, products.size, rank=20, damping=1e-3, factor=f)
    lanczos = arnoldi_inverse(products, products.size, rank=20, damping=1e-3, tol=1e-12)
    info = gram.info()
    assert info["solver"].startswith("dense eigh of the 120 x 120 Gram") and info["products"] == 0
    assert lanczos.info()["solver"].startswith("Lanczos")
    torch.testing.assert_close(gram.eigenvalues, lanczos.eigenvalues, rtol=1e-9, atol=1e-12)
    v = torch.randn(products.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(gram.apply(v), lanczos.apply(v), rtol=1e-7, atol=1e-9)
    g = (f.T @ f).to(torch.float64)
    w = torch.linalg.eigvalsh(g)
    assert info["trace_rest_estimate"] == pytest.approx(float(w[:-20].clamp_min(0).sum()), rel=1e-8)
    assert info["trace_rest_standard_error"] == 0.0
    assert info["captured_trace_share"] == pytest.approx(float(w[-20:].sum() / w.clamp_min(0).sum()), rel=1e-8)
    many = arnoldi_inverse(products, products.size, rank=119, damping=0.0, factor=f)  # past G's rank (<= 108)
    assert many.info()["rank_asked"] == 119 and many.info()["eigenpairs_found"] <= 12 * 9
    assert bool((many.eigenvalues > 0).all()) and many.with_settings(damping=1e-2).info()["rank_asked"] == 119
    assert "(119 asked: G has no more nonzero ones)" in many.report()[1]
    assert torch.allclose(many.apply(v), torch.linalg.pinv(g, hermitian=True, rtol=1e-10) @ v, rtol=1e-6, atol=1e-8)


def test_arnoldi_repeats_exactly_from_its_seeded_start():
    # ARPACK's own start vector advances with every call in a process: two runs then took 148 and 162 products
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((600, 300)))
    g = a @ a.T
    runs = [arnoldi_inverse(lambda q: g @ q, 600, rank=30, trace=False) for _ in range(3)]
    assert len({r.info()["products"] for r in runs}) == 1
    assert all(torch.equal(r.eigenvalues, runs[0].eigenvalues) for r in runs)
    assert torch.allclose(runs[0].eigenvalues, torch.linalg.eigvalsh(g).flip(0)[:30], rtol=1e-8, atol=0)

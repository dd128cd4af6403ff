"""The GGN, its blocks, K-FAC / EK-FAC (curvlinops) and Arnoldi: checked against exact results on small nets."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import interp
from interp.arnoldi import arnoldi_inverse
from interp.errors import InterpError
from interp.ggn import ggn, ggn_blocks, ggn_factor, ggn_products, ggn_vector_product, layer_blocks
from interp.inverse import Curvature, build_inverse
from interp.kronecker import kronecker_coverage, kronecker_inverse
from interp.metrics import ranking_agreement


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    ).double().eval()


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    return DataLoader(TensorDataset(x[:60], y[:60]), batch_size=25), DataLoader(TensorDataset(x[60:80], y[60:80]), batch_size=20)


NAMES = ["0.weight", "0.bias", "4.weight", "4.bias"]


def _exact_inverse(g, damping):
    return torch.linalg.inv(g + damping * torch.eye(len(g), dtype=torch.float64))


def test_ggn_is_the_curvlinops_ggn_and_the_head_hessian(digits):
    train, _ = digits
    net = _net()
    g = ggn(net, train, NAMES)
    assert torch.allclose(g, g.T, atol=1e-12) and float(torch.linalg.eigvalsh(g).min()) > -1e-10
    matvec, size = ggn_vector_product(net, train, NAMES)
    v = torch.randn(size, 3, dtype=torch.float64)
    assert torch.allclose(matvec(v), g @ v, atol=1e-10)
    f = ggn_factor(net, train, NAMES)
    assert torch.allclose(f.T @ f, g, atol=1e-10)
    fast, _, how = ggn_products(net, train, NAMES)
    assert "cached" in how and torch.allclose(fast(v), g @ v, atol=1e-10)
    slow, _, how = ggn_products(net, train, NAMES, max_bytes=1)
    assert "curvlinops" in how and torch.allclose(slow(v), g @ v, atol=1e-10)
    # for the linear head alone the GGN is the Hessian (cross-entropy of an affine map)
    head = ["4.weight", "4.bias"]
    assert torch.allclose(ggn(net, train, head), interp.hessian(net, train, head, method="func"), atol=1e-10)


def test_blocks_are_the_diagonal_blocks_of_the_ggn(digits):
    train, _ = digits
    net = _net()
    g = ggn(net, train, NAMES)
    groups = layer_blocks(net, NAMES)
    assert groups == [["0.weight", "0.bias"], ["4.weight", "4.bias"]]
    b0, b1 = ggn_blocks(net, train, NAMES, groups)
    assert torch.allclose(b0, g[:40, :40], atol=1e-12) and torch.allclose(b1, g[40:, 40:], atol=1e-12)
    with pytest.raises(InterpError, match="exactly once"):
        ggn_blocks(net, train, NAMES, [["0.weight"]])
    inv = build_inverse("blockdiag", Curvature(len(g), model=net, data=train, params=NAMES), rcond="exact",
                        damping=1e-3)  # fmt: skip
    dense = torch.block_diag(_exact_inverse(g[:40, :40], 1e-3), _exact_inverse(g[40:, 40:], 1e-3))
    v = torch.randn(len(g), 2, dtype=torch.float64)
    assert torch.allclose(inv.apply(v), dense @ v, rtol=1e-8, atol=1e-8)
    assert [b["size"] for b in inv.info()["blocks"]] == [40, 2570]
    assert len(inv.spectrum()) == len(g)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kronecker_is_exact_where_the_ggn_is_a_kronecker_product(kind):
    """One training example through a linear layer: G = a a^T (x) (diag p - p p^T), a Kronecker product, so the
    K-FAC and EK-FAC inverses equal the exact damped inverse."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    data = [(torch.randn(1, 6, dtype=torch.float64), torch.tensor([2]))]
    g = ggn(net, data, ["0.weight"])
    inv = kronecker_inverse(net, data, ["0.weight"], kind=kind, damping=1e-2)
    v = torch.randn(24, 3, dtype=torch.float64)
    assert torch.allclose(inv.apply(v), _exact_inverse(g, 1e-2) @ v, rtol=1e-8, atol=1e-8)


def test_kronecker_fisher_types_are_the_ggn_its_monte_carlo_estimate_and_the_empirical_fisher():
    """One example through a linear layer: type-2 gives a a^T (x) (diag p - p p^T) (the GGN); the empirical
    Fisher a a^T (x) g g^T with g = p - e_y, the true label's output gradient; MC an estimate of the GGN."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    x, y = torch.randn(1, 6, dtype=torch.float64), torch.tensor([2])
    data = [(x, y)]
    v = torch.randn(24, 3, dtype=torch.float64)
    p = torch.softmax(net(x), 1)[0].detach()
    g = p - torch.nn.functional.one_hot(y, 4)[0].double()
    empirical = torch.kron(g.outer(g), x[0].outer(x[0]))  # the weight flattened row-major: output-major
    assert torch.allclose(ggn(net, data, ["0.weight"]), torch.kron(p.diag() - p.outer(p), x[0].outer(x[0])))
    emp = kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="empirical")
    assert torch.allclose(emp.apply(v), _exact_inverse(empirical, 1e-2) @ v, rtol=1e-6, atol=1e-8)
    exact = _exact_inverse(ggn(net, data, ["0.weight"]), 1e-1) @ v
    mc = kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-1, fisher_type="mc", mc_samples=4000)
    assert mc.info()["fisher_type"] == "mc" and "4000 sample(s)" in mc.info()["curvature"]
    assert float((mc.apply(v) - exact).norm() / exact.norm()) < 0.1  # an estimate: about 1/sqrt(samples)
    assert not torch.allclose(emp.apply(v), exact, rtol=1e-2)  # the empirical Fisher is not the GGN
    with pytest.raises(InterpError, match="fisher_type must be one of type-2, mc, empirical"):
        kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="exact")
    with pytest.raises(InterpError, match="mc_samples"):
        kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="mc", mc_samples=0)


def test_kronecker_names_what_it_cannot_factorise_and_inverts_it_exactly(digits, monkeypatch):
    train, test = digits
    net = _net()
    covered, uncovered = kronecker_coverage(net, ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"])
    assert uncovered == ["1.weight", "1.bias"] and "0.bias" in covered
    names = ["0.weight", "1.weight", "1.bias", "4.weight"]
    inv = kronecker_inverse(net, train, names, kind="ekfac", damping=1e-3)
    info = inv.info()
    assert info["fallback_names"] == ["1.weight", "1.bias"] and info["fallback_params"] == 8
    assert info["kronecker_params"] == 36 + 2560
    # the fallback block is the exact GGN block of the BatchNorm parameters, damped
    bn = ggn(net, train, ["1.weight", "1.bias"])
    v = torch.zeros(inv.size, 1, dtype=torch.float64)
    v[36:44] = torch.randn(8, 1, dtype=torch.float64)
    assert torch.allclose(inv.apply(v)[36:44], _exact_inverse(bn, 1e-3) @ v[36:44], rtol=1e-8, atol=1e-10)
    with pytest.raises(InterpError, match="damping > 0"):
        kronecker_inverse(net, train, names, kind="kfac", damping=0.0)
    # a selection Kronecker factors do not cover at all is the exact GGN block alone
    only_bn = kronecker_inverse(net, train, ["1.weight", "1.bias"], kind="ekfac", damping=1e-3)
    assert only_bn.info()["kronecker_params"] == 0
    assert torch.allclose(only_bn.apply(v[36:44]), _exact_inverse(bn, 1e-3) @ v[36:44], rtol=1e-8, atol=1e-10)
    # another damping re-uses the factors
    other = inv.with_settings(damping=1e-1)
    assert other.factors is inv.factors and other.info()["damping"] == 1e-1
    # a fallback block over DENSE_FALLBACK_MAX parameters is inverted from its factor: the same inverse
    import interp.kronecker

    monkeypatch.setattr(interp.kronecker, "DENSE_FALLBACK_MAX", 4)
    tall = interp.kronecker._fallback(net, train, ["1.weight", "1.bias"], 1e-3, torch.float64, "cpu", False)
    assert tall.method == "eigh"  # 600 factor rows for 8 parameters: the dense block is the smaller
    thin = interp.kronecker._fallback(net, train, ["4.weight"], 1e-3, torch.float64, "cpu", False)
    assert thin.method == "lowrank"  # 600 rows for 2,560 parameters
    w = torch.randn(2560, 2, dtype=torch.float64)
    assert torch.allclose(thin.apply(w), _exact_inverse(ggn(net, train, ["4.weight"]), 1e-3) @ w, rtol=1e-7, atol=1e-8)


def test_ekfac_approximates_the_ggn_influence(digits):
    train, test = digits
    net = _net()
    g_train = interp.per_example_grads(net, train, NAMES)
    g_test = interp.per_example_grads(net, test, NAMES)
    exact = interp.influence_matrix(g_test, g_train, ggn(net, train, NAMES), damping=1e-2, rcond="exact")
    curvature = Curvature(g_train.shape[1], model=net, data=train, params=NAMES)
    agree = {m: ranking_agreement(interp.influence_matrix(g_test, g_train, build_inverse(m, curvature, damping=1e-2)),
                                  exact, k=5) for m in ("kfac", "ekfac")}  # fmt: skip
    for m, a in agree.items():
        assert a["pearson"] > 0.5 and a["spearman"] > 0.3, (m, a)  # an approximation, not noise


def test_arnoldi_at_full_rank_is_the_exact_pseudo_inverse_and_below_it_the_top_subspace(digits):
    train, _ = digits
    net = _net()
    names = ["0.weight", "0.bias"]
    g = ggn(net, train, names)
    matvec = lambda v: g @ v  # noqa: E731
    v = torch.randn(len(g), 4, dtype=torch.float64)
    full = arnoldi_inverse(matvec, len(g), rank=len(g), damping=1e-3)
    assert full.info()["solver"].startswith("dense") and full.rank == len(g)
    assert torch.allclose(full.apply(v), _exact_inverse(g, 1e-3) @ v, rtol=1e-8, atol=1e-8)
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


def test_arnoldi_past_the_numerical_rank_at_no_damping_is_the_exact_pseudo_inverse(digits):
    """Asking for more eigenpairs than the GGN's numerical rank at damping 0: the round-off eigenvalues are cut
    (``exact``: P * eps relative), not inverted."""
    x, y = next(iter(digits[0]))
    few = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)  # 8 images x 10 classes: rank <= 72 of 2,610
    net = _net()
    g = ggn(net, few, NAMES)
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


def test_arnoldi_reports_the_trace_it_leaves_out_with_its_standard_error(digits):
    train, _ = digits
    net = _net()
    g = ggn(net, train, NAMES)
    w = torch.linalg.eigvalsh(g)
    inv = arnoldi_inverse(lambda q: g @ q, len(g), rank=30, damping=1e-3)
    info = inv.info()
    exact = float(w[-30:].sum() / w.clamp_min(0).sum())
    se = info["captured_trace_share_standard_error"]
    assert 0 < se < 0.05 and abs(info["captured_trace_share"] - exact) < 4 * se + 1e-6
    assert info["trace_found"] == pytest.approx(float(w[-30:].sum()), rel=1e-8)


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


def test_kronecker_methods_take_names_once_in_the_models_order(digits):
    train, _ = digits
    net = _net()
    ordered = kronecker_inverse(net, train, NAMES, kind="ekfac", damping=1e-2)
    messy = kronecker_inverse(net, train, ["4.bias", "0.weight", "4.weight", "0.bias", "4.weight"], kind="ekfac",
                              damping=1e-2)  # fmt: skip
    v = torch.randn(ordered.size, 3, dtype=torch.float64)
    assert messy.size == ordered.size and torch.allclose(messy.apply(v), ordered.apply(v), atol=1e-12)
    assert "separate Kronecker blocks" in ordered.info()["weight_and_bias"]


def test_a_ggn_that_does_not_fit_is_refused_naming_the_ggn_and_its_alternatives(digits):
    train, _ = digits
    with pytest.raises(InterpError, match=r"exact GGN over 2610 parameters .* --method ekfac or kfac"):
        ggn(_net(), train, NAMES, max_bytes=2**20)
    with pytest.raises(InterpError, match=r"2 layer blocks .* largest 2570 x 2570"):
        ggn_blocks(_net(), train, NAMES, layer_blocks(_net(), NAMES), max_bytes=2**20)


def test_ranking_agreement_refuses_k_past_the_row_and_skips_constant_rows_without_warning():
    import warnings

    a = np.array([[0.0, -1.0, 2.0], [1.0, 1.0, 1.0]])
    e = np.array([[0.0, -2.0, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(InterpError, match="between 1 and 3"):
        ranking_agreement(a, e, k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ranking_agreement(a, e, k=2)
    assert out["constant_rows"] == 1 and out["spearman"] == pytest.approx(1.0) and out["k"] == 2


def test_model_methods_are_registry_entries_and_say_what_they_need():
    for name in ("ggn", "blockdiag", "kfac", "ekfac", "arnoldi"):
        assert interp.INVERSES.get(name).needs == "model"
    assert interp.INVERSES.get("ekfac").damped and not interp.INVERSES.get("ggn").damped
    with pytest.raises(InterpError, match="needs the model"):
        build_inverse("ekfac", Curvature(3, matrix=torch.eye(3)), damping=1.0)
    np.testing.assert_equal(ranking_agreement(np.eye(3) * -1, np.eye(3) * -1, k=1)["top_k_overlap"], 1.0)

"""Dense inverses against numpy/scipy: eigh, SVD, Cholesky, the auto switch, re-use of one factorisation."""

import numpy as np
import pytest
import scipy.linalg
import torch

import interp
from interp import InterpError, head_influence, linear_head_grads, linear_head_hessian
from interp.curvature import reduced_to_folded
from interp.inverses import PAPER_RCOND, spectral_inverse


def _psd(p=30, rank=20, seed=0, negative_noise=0.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(p, rank, generator=g, dtype=torch.float64)
    h = a @ a.T / rank
    if negative_noise:  # a few tiny negative eigenvalues, as round-off leaves in a singular Hessian
        v = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))[0]
        w, _ = torch.linalg.eigh(h)
        w = torch.where(w.abs() < 1e-8, -negative_noise * torch.rand(p, generator=g, dtype=torch.float64), w)
        h = v @ torch.diag(w) @ v.T
    return (h + h.T) / 2


@pytest.mark.parametrize("method", ["eigh", "svd"])
@pytest.mark.parametrize("rcond", [None, 1e-3, PAPER_RCOND])
def test_spectral_inverses_equal_scipy_pinv(method, rcond):
    h = _psd(negative_noise=1e-3)
    b = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inv = interp.pseudo_inverse(h, rcond=rcond, method=method)
    rtol = 30 * np.finfo(np.float64).eps if rcond is None else rcond
    ref = scipy.linalg.pinv(h.numpy(), rtol=rtol) @ b.numpy()
    assert isinstance(inv, interp.SpectralInverse) and inv.method == method
    assert np.allclose(inv.apply(b).numpy(), ref, rtol=1e-9, atol=1e-9)
    assert inv.info()["rank_kept"] == np.linalg.matrix_rank(h.numpy(), tol=rtol * np.abs(np.linalg.eigvalsh(h)).max())


def test_the_paper_cut_off_is_scipy_pinv_with_rtol_five_percent():
    h = _psd(p=40, rank=40, seed=2)
    inv = interp.pseudo_inverse(h, rcond="paper", method="svd")
    assert inv.rcond == 0.05
    ref = scipy.linalg.pinv(h.numpy(), rtol=0.05)
    assert np.allclose(inv.apply(torch.eye(40, dtype=torch.float64)).numpy(), ref, rtol=1e-9, atol=1e-12)
    assert interp.resolve_rcond("exact", 40) == 40 * np.finfo(np.float64).eps
    with pytest.raises(InterpError, match="'paper' or 'exact'"):
        interp.resolve_rcond("papre", 40)


def test_cholesky_equals_the_inverse_and_auto_switches_to_eigh_only_when_something_is_cut():
    full = _psd(rank=60)  # positive definite, well conditioned
    b = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    chol = interp.pseudo_inverse(full, method="cholesky")
    assert isinstance(chol, interp.CholeskyInverse)
    assert np.allclose(chol.apply(b).numpy(), np.linalg.solve(full.numpy(), b.numpy()), rtol=1e-10)
    assert isinstance(interp.pseudo_inverse(full), interp.CholeskyInverse)  # auto: nothing would be cut
    assert isinstance(interp.pseudo_inverse(full, rcond=0.5), interp.SpectralInverse)  # the cut-off bites
    singular = _psd(rank=10)
    assert isinstance(interp.pseudo_inverse(singular), interp.SpectralInverse)
    with pytest.raises(InterpError, match="not positive definite"):
        interp.pseudo_inverse(singular, method="cholesky")
    damped = interp.pseudo_inverse(singular, damping=0.5)
    assert isinstance(damped, interp.CholeskyInverse)
    assert np.allclose(damped.apply(b).numpy(), np.linalg.solve(singular.numpy() + 0.5 * np.eye(30), b.numpy()))


def test_one_eigendecomposition_serves_every_cut_off_and_damping():
    h = _psd(negative_noise=1e-4)
    b = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    base = spectral_inverse(h, rcond=None)
    for rcond in ("paper", 1e-2, 1e-6, "exact"):
        for damping in (0.0, 1e-3, 0.1):
            again = interp.pseudo_inverse(h, rcond=rcond, damping=damping, method="eigh")
            reused = base.with_settings(rcond=rcond, damping=damping)
            assert np.allclose(reused.apply(b).numpy(), again.apply(b).numpy(), rtol=1e-10, atol=1e-12)
            assert reused.info() == again.info()


def test_the_report_says_what_was_dropped_and_the_norm_share_it_carried():
    h = _psd(rank=10)
    inv = interp.pseudo_inverse(h, method="eigh")
    info = inv.info()
    assert info["rank_kept"] == 10 and info["n_dropped"] == 20 and info["dropped_eigenvalues_max_abs"] < 1e-12
    assert len(inv.spectrum()) == 30 and np.all(np.diff(inv.spectrum()) >= 0)
    w, v = np.linalg.eigh(h.numpy())
    g = torch.randn(7, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    dropped = v[:, np.abs(w) <= info["cutoff"]]
    expected = float(((g.numpy() @ dropped) ** 2).sum() / (g.numpy() ** 2).sum())
    assert inv.dropped_norm_share(g) == pytest.approx(expected, rel=1e-10)
    in_range = g @ h  # rows in the range of H: nothing of them is dropped
    assert inv.dropped_norm_share(in_range) < 1e-12


def test_every_operator_serves_influence_matrix_with_the_same_numbers():
    h = _psd(rank=60) + 0.0
    gen = torch.Generator().manual_seed(8)
    g_te, g_tr = (
        torch.randn(5, 30, dtype=torch.float64, generator=gen),
        torch.randn(12, 30, dtype=torch.float64, generator=gen),
    )
    ref = -(g_te.numpy() @ np.linalg.inv(h.numpy()) @ g_tr.numpy().T)
    ops = [
        interp.pseudo_inverse(h, method="cholesky"),
        interp.pseudo_inverse(h, method="eigh"),
        interp.pseudo_inverse(h, method="svd"),
        interp.ConjugateGradientInverse(lambda v: h @ v, 30, tol=1e-13, chunk=5),
    ]
    for op in ops:
        got = interp.influence_matrix(g_te, g_tr, op)
        assert np.allclose(got.numpy(), ref, rtol=1e-8, atol=1e-10), op.method
        assert {"method", "size"} <= set(op.info())
    with pytest.raises(InterpError, match="30 x 30; got a right-hand side"):
        ops[0].apply(torch.ones(29))


def test_dead_features_are_removed_exactly_and_reported():
    g = torch.Generator().manual_seed(4)
    n, d, c = 80, 9, 4
    z = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64))
    z[:, [2, 5]] = 0  # dead on the training set
    zt = torch.relu(torch.randn(20, d, generator=g, dtype=torch.float64))  # but alive on test images
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y, yt = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (20,), generator=g)
    res = head_influence(z, z @ w.T, y, zt, zt @ w.T, yt)
    assert res["removed"]["dead_features"]["indices"] == [2, 5]
    assert res["removed"]["dead_features"]["directions"] == 2 * (c - 1)
    assert res["inverse"].method == "cholesky" and res["inverse"].size == (c - 1) * (d - 2 + 1)
    h = linear_head_hessian(z, z @ w.T).numpy()
    g_tr, g_te = linear_head_grads(z, z @ w.T, y).numpy(), linear_head_grads(zt, zt @ w.T, yt).numpy()
    ref = -(g_te @ np.linalg.pinv(h, hermitian=True) @ g_tr.T)
    assert np.allclose(np.asarray(res["test"]), ref, rtol=1e-8, atol=1e-12)
    back = reduced_to_folded(res["hessian_reduced"], res["basis"], res["live"]).numpy()
    assert np.allclose(back, h, atol=1e-13)  # the saved hessian.npy is the full one, zeros included
    damped = head_influence(z, z @ w.T, y, zt, zt @ w.T, yt, damping=0.1)
    ref_damped = -(g_te @ np.linalg.inv(h + 0.1 * np.eye(len(h))) @ g_tr.T)
    assert np.allclose(np.asarray(damped["test"]), ref_damped, rtol=1e-8, atol=1e-12)


def test_the_eigh_pseudo_inverse_of_a_shipped_head_hessian_matches_an_extended_precision_reference():
    """The generic Hessian of the shipped mnist5k-l2 head (650 parameters, 65 exact null directions: one
    per feature and the bias, where a constant added to every class changes no softmax), 300 images, lambda
    = 0. Reference: the same H restricted to the complement of that null space, solved by iterative
    refinement with 80-bit residuals (numpy longdouble), so only H's own float64 rounding remains."""
    import scipy.linalg
    from torch.utils.data import DataLoader, Subset

    from transfer.datasets import Transformed, load_raw_splits
    from transfer.transforms import build_transform
    from transfer.zoo import load_source

    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("no extended precision on this platform")
    src = load_source("mnist5k-l2")
    model = src.model.eval()
    train, test = load_raw_splits("mnist5k")
    tf = build_transform(src.input_size, train=False)
    h = interp.hessian(model, DataLoader(Subset(Transformed(train, tf), range(300)), batch_size=150), params="model.fc")
    g = interp.per_example_grads(model, DataLoader(Subset(Transformed(test, tf), range(10)), batch_size=10),
                                 params="model.fc").double()  # fmt: skip
    c, d = model.model.fc.weight.shape
    p = h.shape[0]
    null = np.zeros((p, d + 1))
    for j in range(d):
        null[[k * d + j for k in range(c)], j] = 1 / np.sqrt(c)  # weights (C, D) row-major, then the bias (C)
    null[c * d :, d] = 1 / np.sqrt(c)
    q = np.linalg.qr(np.concatenate([null, np.random.default_rng(0).standard_normal((p, p - d - 1))], 1))[0][:, d + 1 :]
    ld = np.longdouble
    h_r = q.astype(ld).T @ h.numpy().astype(ld) @ q.astype(ld)
    b_r = q.astype(ld).T @ g.numpy().T.astype(ld)
    lu = scipy.linalg.lu_factor(h_r.astype(np.float64))
    x = scipy.linalg.lu_solve(lu, b_r.astype(np.float64)).astype(ld)
    for _ in range(10):
        x += scipy.linalg.lu_solve(lu, (b_r - h_r @ x).astype(np.float64)).astype(ld)
    reference = (q.astype(ld) @ x).astype(np.float64)
    condition = np.linalg.cond(h_r.astype(np.float64))
    got = interp.pseudo_inverse(h, method="eigh").apply(g.T).numpy()
    error = np.abs(got - reference).max() / np.abs(reference).max()
    assert interp.pseudo_inverse(h, method="eigh").rank == p - d - 1
    # at the problem's floor: float64 round-off of H amplified by its condition (measured 1.2e-9 at condition 7e8)
    assert error < 10 * condition * np.finfo(np.float64).eps, (error, condition)


def test_the_spectrum_ends_are_exact_with_a_cluster_at_the_damping_and_lanczos_agrees_above_the_dense_size(monkeypatch):
    """A head Hessian's null directions put hundreds of eigenvalues of H + damping I at the damping: the dense path
    gives the ends exactly; Lanczos (forced here on a small matrix with such a cluster) returns true eigenvalues, the
    cluster's among them, but not its multiplicity, which is why matrices up to 4,096 parameters go the dense way."""
    from interp.inverses import dense
    from interp.inverses.dense import extreme_eigenvalues, pseudo_inverse

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(200, 200)))
    w = np.concatenate([np.zeros(120), np.geomspace(1e-3, 5.0, 80)])  # 120 null directions
    h = torch.from_numpy((q * w) @ q.T)
    h = (h + h.T) / 2
    inv = pseudo_inverse(h, rcond="exact", damping=5e-4, method="cholesky")
    exact = extreme_eigenvalues(h, inv, k=5)
    np.testing.assert_allclose(exact["largest"], w[-5:], rtol=1e-10)
    np.testing.assert_allclose(exact["smallest"], np.zeros(5), atol=1e-12)
    monkeypatch.setattr(dense, "DENSE_SPECTRUM_UP_TO", 0)
    lanczos = extreme_eigenvalues(h, inv, k=5)
    np.testing.assert_allclose(lanczos["largest"], w[-5:], rtol=1e-5)
    # Lanczos sees a repeated eigenvalue once or a few times, not with its multiplicity: every value it returns is an
    # eigenvalue of H, the smallest the cluster's, but the five smallest are not five zeros as the dense path says
    small = lanczos["smallest"]
    assert 1 <= len(small) <= 5 and abs(small[0]) < 1e-8
    assert all(np.min(np.abs(w - x)) < 1e-8 for x in small)

import numpy as np
import pytest
import torch
from torch import nn

import interp
from interp import head_influence, linear_head_grads
from interp.curvature import folded_to_canonical
from interp.errors import InterpError


def _head_problem(n_train=60, n_test=25, d=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_train = torch.randn(n_train, d, generator=g, dtype=torch.float64)
    z_test = torch.randn(n_test, d, generator=g, dtype=torch.float64)
    head = nn.Linear(d, c).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
    y_train = torch.randint(0, c, (n_train,), generator=g)
    y_test = torch.randint(0, c, (n_test,), generator=g)
    return head, z_train, y_train, z_test, y_test


def _direct(g_test, g_train, h):
    """The definition, by numpy's pseudo-inverse: an independent dense computation."""
    return -(g_test.numpy() @ np.linalg.pinv(h.numpy(), hermitian=True) @ g_train.numpy().T)


def test_influence_matrix_equals_a_direct_dense_solve_with_every_method():
    head, z_train, y_train, z_test, y_test = _head_problem()
    loader = [(z_train, y_train)]
    h = interp.hessian(head, loader, head)
    g_train = interp.per_example_grads(head, loader, head)
    g_test = interp.per_example_grads(head, [(z_test, y_test)], head)
    ref = _direct(g_test, g_train, h)
    for method in ("eigh", "svd"):
        got = interp.influence_matrix(g_test, g_train, h, method=method)
        assert np.allclose(got.numpy(), ref, rtol=1e-8, atol=1e-10)
    pd = h + 0.1 * torch.eye(len(h), dtype=torch.float64)  # positive definite: Cholesky applies
    chol = interp.influence_matrix(g_test, g_train, pd, method="cholesky")
    assert np.allclose(chol.numpy(), -(g_test.numpy() @ np.linalg.solve(pd.numpy(), g_train.numpy().T)), rtol=1e-8)
    damped = interp.influence_matrix(g_test, g_train, h, damping=0.1, method="eigh")
    assert np.allclose(damped.numpy(), chol.numpy(), rtol=1e-8)


def test_the_softmax_head_hessian_is_singular_and_the_null_space_handling_changes_nothing():
    head, z_train, y_train, z_test, y_test = _head_problem()
    c, d = head.weight.shape
    h = interp.hessian(head, [(z_train, y_train)], head)
    eig = torch.linalg.eigvalsh(h)
    assert (eig.abs() < 1e-12).sum() == d + 1  # one null direction per folded feature
    g_train = interp.per_example_grads(head, [(z_train, y_train)], head)
    g_test = interp.per_example_grads(head, [(z_test, y_test)], head)
    with torch.no_grad():
        res = head_influence(z_train, head(z_train), y_train, z_test, head(z_test), y_test)
    assert res["inverse"].method == "cholesky" and res["inverse"].rank == (c - 1) * (d + 1)
    assert np.allclose(np.asarray(res["test"]), _direct(g_test, g_train, h), rtol=1e-8, atol=1e-12)
    assert np.allclose(np.asarray(res["train"]), _direct(g_train, g_train, h), rtol=1e-8, atol=1e-12)


def test_blocked_streaming_to_disk_matches_in_memory(tmp_path):
    head, z_train, y_train, z_test, y_test = _head_problem()
    with torch.no_grad():
        mem = head_influence(z_train, head(z_train), y_train, z_test, head(z_test), y_test, block_size=7)
        disk = head_influence(
            z_train,
            head(z_train),
            y_train,
            z_test,
            head(z_test),
            y_test,
            block_size=4,
            out_test=tmp_path / "t.npy",
            out_train=tmp_path / "r.npy",
        )
    assert isinstance(disk["test"], np.memmap) and isinstance(disk["train"], np.memmap)
    assert np.allclose(np.load(tmp_path / "t.npy"), np.asarray(mem["test"]), rtol=1e-12)
    assert np.allclose(np.load(tmp_path / "r.npy"), np.asarray(mem["train"]), rtol=1e-12)


def test_conjugate_gradient_matches_the_dense_path_on_a_hidden_layer():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=g)
    loader = [(x[:25], y[:25]), (x[25:], y[25:])]
    params = ["0.weight", "2.weight"]
    h = interp.hessian(model, loader, params)
    g_all = interp.per_example_grads(model, loader, params)
    # a hidden layer's Hessian can be indefinite; enough damping makes the system positive definite
    damping = max(1e-3, -float(torch.linalg.eigvalsh(h).min()) + 1e-2)
    dense = interp.influence_matrix(g_all[:10], g_all, h, damping=damping, method="eigh")
    matvec, p = interp.hessian_vector_product(model, loader, params)
    assert torch.allclose(matvec(torch.eye(p, dtype=torch.float64)), h, atol=1e-10)
    inv = interp.ConjugateGradientInverse(matvec, p, damping=damping, tol=1e-12)
    cg = interp.influence_matrix(g_all[:10], g_all, inv)
    assert torch.allclose(cg, dense, rtol=1e-6, atol=1e-8)
    info = inv.info()
    assert info["converged"] and info["max_relative_residual"] <= 1e-12 and info["solves"] == len(g_all)


def test_conjugate_gradient_that_stops_early_says_so_with_its_residual():
    a = torch.diag(torch.logspace(0, 8, 40, dtype=torch.float64))  # condition number 1e8
    b = torch.ones(40, 2, dtype=torch.float64)
    x, iters, residual = interp.conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=5)
    true = torch.linalg.norm(b - a @ x, dim=0) / torch.linalg.norm(b, dim=0)
    assert iters == 5 and residual > 1e-3
    assert abs(residual - float(true.max())) < 1e-6 * residual  # the reported residual is the real one
    g = torch.ones(3, 40, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"CG did not converge: relative residual .* after 5 iterations"):
        inv = interp.ConjugateGradientInverse(lambda v: a @ v, 40, max_iter=5)
        interp.influence_matrix(g, g, inv)
    info = inv.info()
    assert not info["converged"] and info["max_relative_residual"] > 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_with_where(bad):
    a = torch.eye(4, dtype=torch.float64)
    g = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(InterpError, match="damping must be a finite number >= 0"):
        interp.pseudo_inverse(a, damping=bad)
    with pytest.raises(InterpError, match=r"rcond must be a finite number in \[0, 1\)"):
        interp.pseudo_inverse(a, rcond=bad)
    with pytest.raises(InterpError, match="non-finite values .* in the Hessian"):
        interp.pseudo_inverse(a * bad)
    with pytest.raises(InterpError, match="non-finite values .* in the test gradients"):
        interp.influence_matrix(g * bad, g, a)
    with pytest.raises(InterpError, match="non-finite values .* in the right-hand sides"):
        interp.conjugate_gradient(lambda v: v, g.T * bad)
    head, z_train, y_train, z_test, y_test = _head_problem()
    logits = head(z_train).detach()
    with pytest.raises(InterpError, match="non-finite values .* in the training features"):
        head_influence(z_train * bad, logits, y_train, z_test, head(z_test).detach(), y_test)


def test_a_negative_cut_off_is_refused():
    with pytest.raises(InterpError, match="rcond must be"):
        interp.pseudo_inverse(torch.eye(3, dtype=torch.float64), rcond=-1.0)


def test_linear_head_gradients_reorder_to_the_canonical_layout():
    head, z_train, y_train, _, _ = _head_problem()
    with torch.no_grad():
        folded = linear_head_grads(z_train, head(z_train), y_train)
    generic = interp.per_example_grads(head, [(z_train, y_train)], head)
    assert torch.allclose(folded[:, folded_to_canonical(4, 6)], generic, atol=1e-12)


def test_relatif_and_cosine_equal_direct_numpy_computations():
    head, z_train, y_train, z_test, y_test = _head_problem()
    loader = [(z_train, y_train)]
    h = interp.hessian(head, loader, head)
    g_tr = interp.per_example_grads(head, loader, head)
    g_te = interp.per_example_grads(head, [(z_test, y_test)], head)
    gtr, gte, hp = g_tr.numpy(), g_te.numpy(), np.linalg.pinv(h.numpy(), hermitian=True)
    solved = hp @ gtr.T
    relatif = -(gte @ solved) / np.linalg.norm(solved, axis=0)
    cosine = -(gte @ gtr.T) / np.outer(np.linalg.norm(gte, axis=1), np.linalg.norm(gtr, axis=1))
    got_r = interp.influence_matrix(g_te, g_tr, h, normalize="relatif")
    got_c = interp.influence_matrix(g_te, g_tr, h, normalize="cosine")
    assert np.allclose(got_r.numpy(), relatif, rtol=1e-8, atol=1e-10)
    assert np.allclose(got_c.numpy(), cosine, rtol=1e-10, atol=1e-12)
    # the softmax head's reduced path (null space and norms handled in reduced coordinates) agrees
    with torch.no_grad():
        for normalize, ref in (("relatif", relatif), ("cosine", cosine)):
            res = head_influence(z_train, head(z_train), y_train, z_test, head(z_test), y_test, normalize=normalize)
            perm_ref = ref  # influence values do not depend on the parameter layout
            assert np.allclose(np.asarray(res["test"]), perm_ref, rtol=1e-8, atol=1e-10), normalize
    with pytest.raises(InterpError, match="normalize must be one of"):
        interp.influence_matrix(g_te, g_tr, h, normalize="l2")


def test_streamed_influence_equals_the_dense_one_in_any_chunking():
    from interp import per_example_grad_batches
    from interp.influence import streamed_influence

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(23, 5, dtype=torch.float64), torch.randint(0, 3, (23,))
    train = [(x[:10], y[:10]), (x[10:17], y[10:17])]
    test = [(x[17:20], y[17:20]), (x[20:], y[20:])]
    h = interp.hessian(model, train) + 0.1 * torch.eye(39, dtype=torch.float64)
    inv = interp.pseudo_inverse(h, method="eigh")
    g_tr, g_te = interp.per_example_grads(model, train), interp.per_example_grads(model, test)
    dense = interp.influence_matrix(g_te, g_tr, inv)
    batches = lambda loader: lambda: per_example_grad_batches(model, loader)  # noqa: E731
    for rows_per_chunk, passes in ((1, 6), (4, 2), (100, 1)):
        got, n = streamed_influence(inv, batches(test), batches(train), (6, 17), budget_bytes=2 * 8 * 39 * rows_per_chunk)
        assert n == passes
        torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-14)
    with pytest.raises(interp.InterpError, match="columns"):
        streamed_influence(inv, batches(test), batches(train), (6, 18), budget_bytes=10**6)
    for normalize in ("relatif", "cosine"):  # normalised as the held path normalises
        held = interp.influence_matrix(g_te, g_tr, inv, normalize=normalize)
        got, n = streamed_influence(inv, batches(test), batches(train), (6, 17), budget_bytes=2 * 8 * 39 * 4,
                                    normalize=normalize)  # fmt: skip
        assert n == 2 + (normalize == "relatif")  # relatif: one more pass for the columns' norms
        torch.testing.assert_close(got, held, rtol=1e-12, atol=1e-14)
    with pytest.raises(interp.InterpError, match="normalize must be one of"):
        streamed_influence(inv, batches(test), batches(train), (6, 17), budget_bytes=10**6, normalize="l2")

"""The refined inverse: conjugate gradients on the exact GGN, preconditioned by EK-FAC, converge to the exact inverse."""

import dataclasses

import pytest
import torch

import interp
from interp import InterpError
from interp.curvature import ggn
from interp.inverses import ArnoldiInverse, Curvature, DeflationPreconditioner, build_inverse, conjugate_gradient


def test_preconditioned_cg_is_the_exact_solution_in_fewer_iterations():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-3, 2, 60, dtype=torch.float64)) @ q.T  # condition 1e5
    b = torch.randn(60, 3, dtype=torch.float64)
    exact = torch.linalg.solve(a + 1e-3 * torch.eye(60, dtype=torch.float64), b)
    plain_x, plain_it, _ = conjugate_gradient(lambda v: a @ v, b, damping=1e-3, tol=1e-10, max_iter=2000)
    near = (
        q
        @ torch.diag(torch.logspace(-3, 2, 60, dtype=torch.float64) * (1 + 0.2 * torch.rand(60, dtype=torch.float64)))
        @ q.T
    )
    pre = torch.linalg.inv(near + 1e-3 * torch.eye(60, dtype=torch.float64))
    pre_x, pre_it, res = conjugate_gradient(lambda v: a @ v, b, damping=1e-3, tol=1e-10, max_iter=2000,
                                            precondition=lambda r: pre @ r)  # fmt: skip
    assert torch.allclose(plain_x, exact, rtol=1e-6, atol=1e-8) and torch.allclose(pre_x, exact, rtol=1e-6, atol=1e-8)
    assert res <= 1e-10 and pre_it < plain_it / 3


def test_refined_is_the_exact_ggn_inverse_and_says_how_it_got_there(digits, small_net, names, exact_inverse):
    train, _ = digits
    net = small_net()
    g = ggn(net, train, names)
    curvature = Curvature(len(g), model=net, data=train, params=names)
    inv = build_inverse("refined", curvature, damping=1e-2, refined_tol=1e-10)
    v = torch.randn(len(g), 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = exact_inverse(g, 1e-2) @ v
    assert torch.linalg.norm(inv.apply(v) - exact) <= 1e-8 * torch.linalg.norm(exact)  # cond ~1e2 x residual 1e-10
    info = inv.info()
    assert info["method"] == "refined" and info["converged"] and info["preconditioner"]["method"] == "ekfac"
    assert info["max_relative_residual"] <= 1e-10 and info["solve_seconds"] > 0
    # where EK-FAC is close to the GGN (the head's weight alone: the Kronecker product is nearly exact), it shortens
    # the way several times over; with the conv layer and the biases as separate blocks here it is a poorer guide
    head = Curvature(2560, model=net, data=train, params=["4.weight"])
    guided, plain = (build_inverse("refined", head, damping=1e-2, refined_tol=1e-10, refined_preconditioner=p)
                     for p in ("ekfac", "none"))  # fmt: skip
    w = v[:2560]
    assert torch.linalg.norm(guided.apply(w) - plain.apply(w)) <= 1e-7 * torch.linalg.norm(plain.apply(w))
    assert 3 * guided.info()["max_iterations"] < plain.info()["max_iterations"]
    other = inv.with_settings(damping=1e-1)  # the same products and factors, another damping
    assert other.preconditioner.damping == 1e-1
    exact = exact_inverse(g, 1e-1) @ v
    assert torch.linalg.norm(other.apply(v) - exact) <= 1e-8 * torch.linalg.norm(exact)
    assert any("preconditioned by ekfac" in line for line in inv.report())
    with pytest.raises(InterpError, match="refined_preconditioner must be one of ekfac, kfac, arnoldi, none"):
        build_inverse("refined", curvature, damping=1e-2, refined_preconditioner="lbfgs")
    assert interp.INVERSES.get("refined").damped


def test_the_arnoldi_preconditioner_is_the_better_guide_at_a_small_damping_with_fewer_rows_than_parameters(
    digits, small_net, names, exact_inverse
):
    # 60 images x 10 classes = 600 GGN rows for 2,610 parameters: G + damping I is the damping on a null space of
    # over 2,000 dimensions, which EK-FAC's eigenbasis smears and the top eigenpairs of G leave as it is
    train, _ = digits
    net = small_net()
    g = ggn(net, train, names)
    v = torch.randn(len(g), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = exact_inverse(g, 1e-4) @ v
    solved = {}
    for p in ("arnoldi", "ekfac", "none"):
        curvature = Curvature(len(g), model=net, data=train, params=names)
        inv = build_inverse("refined", curvature, damping=1e-4, refined_tol=1e-10, refined_max_iter=1000,
                            refined_preconditioner=p, refined_rank=200)  # fmt: skip
        solved[p] = inv.apply(v), inv.info(), inv
        assert torch.linalg.norm(solved[p][0] - exact) <= 1e-8 * torch.linalg.norm(exact), p
    its = {p: info["max_iterations"] for p, (_, info, _) in solved.items()}
    stopped = dataclasses.replace(solved["ekfac"][2], max_iter=its["arnoldi"])  # the same products and EK-FAC
    with pytest.warns(UserWarning, match="CG did not converge"):
        stopped.apply(v)
    line = stopped.report()[0]
    assert "stopped at its iteration limit" in line and "--refined-preconditioner arnoldi" in line
    assert 3 * its["arnoldi"] < min(its["ekfac"], its["none"])
    assert solved["arnoldi"][1]["preconditioner"]["method"] == "arnoldi"
    pre = solved["arnoldi"][1]["preconditioner"]
    assert pre["eigenpairs"] == 200 and pre["products"] == 0 and "Gram matrix" in pre["solver"]  # the cached factor's
    with pytest.raises(InterpError, match="refined_rank must be an integer >= 1"):
        build_inverse("refined", Curvature(len(g), model=net, data=train, params=names), damping=1e-4,
                      refined_preconditioner="arnoldi", refined_rank=0)  # fmt: skip


def test_the_deflation_preconditioner_is_the_identity_off_its_eigenvectors_and_flattens_them():
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    w = torch.tensor([8.0, 4.0, 2.0], dtype=torch.float64)
    pre = DeflationPreconditioner(ArnoldiInverse(w, q[:, :3], 0.5, "ggn"))
    g = q[:, :3] @ torch.diag(w) @ q[:, :3].T
    # M^{-1} (G + damping I) is w_r + damping on V's span and the damping alone off it
    m = pre.apply(g + 0.5 * torch.eye(30, dtype=torch.float64))
    assert torch.allclose(m @ q[:, :3], 2.5 * q[:, :3]) and torch.allclose(m @ q[:, 3:], 0.5 * q[:, 3:])
    assert pre.with_settings(damping=1.0).damping == 1.0 and pre.size == 30

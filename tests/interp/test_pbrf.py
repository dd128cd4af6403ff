"""The PBRF solver (interp.pbrf) against the closed-form first-order response it tends to as epsilon -> 0."""

import pytest
import torch
from torch import nn

from interp import InterpError, pbrf_response, pbrf_whitening
from interp.curvature.ggn import ggn_factor


def _problem(seed=0, n=24, d=5, c=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, c)).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    return model, x, y


def _flat(theta: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in theta.values()])


def _first_order(model, x, y, m, damping):
    """(1/n) (G + damping I)^{-1} g_m: the influence function's response to removing example m."""
    factor = ggn_factor(model, [(x, y)], None, dtype=torch.float64, device=x.device)
    g_mat = factor.T @ factor + damping * torch.eye(factor.shape[1], dtype=torch.float64)
    loss = nn.functional.cross_entropy(model(x[m : m + 1]), y[m : m + 1])
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    return torch.linalg.solve(g_mat, g) / len(y)


@pytest.mark.parametrize("whitening", ["auto", None])
def test_small_epsilon_response_is_the_first_order_one(whitening):
    model, x, y = _problem()
    damping, eps = 0.05, 1e-3
    theta_s = _flat(dict(model.named_parameters())).detach()
    theta, info = pbrf_response(model, x, y, 4, damping=damping, epsilon=eps, whitening=whitening, tol=1e-8)
    moved = (_flat(theta) - theta_s) / eps
    expected = _first_order(model, x, y, 4, damping)
    assert info["whitened"] == (whitening == "auto") and not info["diverged"]
    assert torch.nn.functional.cosine_similarity(moved, expected, dim=0) > 0.999
    assert moved.norm() == pytest.approx(expected.norm().item(), rel=2e-2)
    # the caller's model is untouched
    assert torch.equal(_flat(dict(model.named_parameters())).detach(), theta_s)


def test_whitened_and_plain_solves_reach_the_same_minimiser():
    model, x, y = _problem(seed=1)
    a, ia = pbrf_response(model, x, y, 2, damping=0.1, epsilon=1.0, whitening="auto", tol=1e-6)
    b, ib = pbrf_response(model, x, y, 2, damping=0.1, epsilon=1.0, whitening=None, tol=1e-6)
    assert ia["converged"] and ib["converged"]
    assert torch.allclose(_flat(a), _flat(b), atol=1e-6)
    assert ia["moved"] > 0


def test_auto_epsilon_moves_the_weights_by_the_stated_share():
    model, x, y = _problem(seed=2)
    _, info = pbrf_response(model, x, y, 0, damping=0.01, epsilon="auto", max_move=1e-3, tol=1e-8)
    assert 0 < info["epsilon"] <= 1
    if info["epsilon"] < 1:  # capped by the move, which the solve then reaches to first order
        assert info["relative_move"] == pytest.approx(1e-3, rel=0.05)


def test_bad_arguments_are_refused():
    model, x, y = _problem()
    with pytest.raises(InterpError, match="damping > 0"):
        pbrf_response(model, x, y, 0, damping=0.0)
    with pytest.raises(InterpError, match="remove"):
        pbrf_response(model, x, y, len(y), damping=0.1)
    with pytest.raises(InterpError, match="epsilon"):
        pbrf_response(model, x, y, 0, damping=0.1, epsilon=2.0)
    with pytest.raises(InterpError, match="auto"):
        pbrf_response(model, x, y, 0, damping=0.1, epsilon="auto", whitening=None)
    w = pbrf_whitening(model, x, y, damping=0.1)
    with pytest.raises(InterpError, match="damping"):
        pbrf_response(model, x, y, 0, damping=0.2, whitening=w)
    assert pbrf_whitening(model, x, y, damping=0.1, max_bytes=10) is None  # the factor would not fit

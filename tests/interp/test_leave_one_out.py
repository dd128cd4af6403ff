"""Koh & Liang's Figure 2 check, as shipped in ``examples/leave_one_out.py``."""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

import interp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "leave_one_out.py"


def _example():
    spec = importlib.util.spec_from_file_location("leave_one_out", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predicted_leave_one_out_matches_retraining():
    result = _example().leave_one_out_check()
    assert result["pearson"] >= 0.99
    assert np.sign(result["predicted"]).tolist().count(1) > 0  # both harmful and helpful removals are covered
    assert np.sign(result["predicted"]).tolist().count(-1) > 0


def test_rankings_agree_with_captum_naive_influence(tmp_path):
    from captum.influence import NaiveInfluenceFunction
    from torch.utils.data import TensorDataset

    ex = _example()
    x_tr, y_tr, x_te, y_te = ex.digit_features(n_train=120, n_test=8, dims=6)
    torch.manual_seed(0)
    model = nn.Linear(6, 10).double()
    ex.train_to_optimum(model, x_tr, y_tr, lam=1e-2)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    damping = 1e-2
    loader = [(x_tr, y_tr)]
    ours = interp.influence_matrix(
        interp.per_example_grads(model, [(x_te, y_te)], model),
        interp.per_example_grads(model, loader, model),
        interp.hessian(model, loader, model),
        damping=damping,
    ).numpy()
    captum = NaiveInfluenceFunction(
        model,
        TensorDataset(x_tr, y_tr),
        str(tmp_path / "ckpt.pt"),
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=len(y_tr),
        projection_dim=70,  # full rank: P = 70
        hessian_reg=len(y_tr) * damping,  # captum's Hessian is of the SUM of losses: n H
    )
    theirs = captum.influence((x_te, y_te)).detach().numpy()
    # captum reports +g_test^T (n H + n damping I)^-1 g_train: the opposite sign, 1/n the scale
    assert np.allclose(ours, -len(y_tr) * theirs, rtol=1e-6, atol=1e-9)
    assert (np.argsort(ours, axis=1) == np.argsort(-theirs, axis=1)).all()


def test_newton_and_lbfgs_refits_reach_the_same_optimum_and_leave_one_out_changes():
    import pytest

    from interp.errors import InterpError

    ex = _example()
    z, y, z_te, y_te = ex.digit_features(n_train=150, n_test=6, dims=12)
    torch.manual_seed(0)
    w, b = 0.1 * torch.randn(10, 12, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    keep = torch.ones(len(y), dtype=torch.float64)
    keep[3] = 0.0
    lam = 5e-3
    for weights in (None, keep):
        wn, bn, fn = interp.refit_head(z, y, w, b, lam, weights=weights, solver="newton")
        wl, bl, fl = interp.refit_head(z, y, w, b, lam, weights=weights, solver="lbfgs")
        assert fn["solver"] == "newton" and fl["solver"] == "lbfgs"
        # Newton reaches the tolerance; L-BFGS stalls a little above it (measured 2.6e-9 here)
        assert fn["grad_norm"] < 1e-10 <= fn["grad_norm_before"] and fl["grad_norm"] < 1e-7
        assert torch.allclose(wn, wl, atol=1e-6) and torch.allclose(bn, bl, atol=1e-6)
    assert interp.refit_head(z, y, w, b, lam)[2]["solver"] == "newton"  # auto: a small head with lam > 0
    assert interp.refit_head(z, y, w, b, 0.0, max_rounds=1)[2]["solver"] == "lbfgs"  # lam = 0: no Newton
    with pytest.raises(InterpError, match="needs an L2 strength > 0"):
        interp.refit_head(z, y, w, b, 0.0, solver="newton")
    with pytest.raises(InterpError, match="solver must be one of"):
        interp.refit_head(z, y, w, b, lam, solver="cg")
    w0, b0, _ = interp.refit_head(z, y, w, b, lam)
    pairs = [(0, 3), (1, 3), (2, 7)]
    deltas = interp.leave_one_out(z, y, z_te, y_te, w0, b0, lam, pairs)
    for (t, j), delta in zip(pairs, deltas, strict=True):  # each the same as its own L-BFGS refit
        kept = torch.ones(len(y), dtype=torch.float64)
        kept[j] = 0.0
        wl, bl, _ = interp.refit_head(z, y, w0, b0, lam, weights=kept, solver="lbfgs")
        zt, yt = z_te[t : t + 1], y_te[t : t + 1]
        change = float(torch.nn.functional.cross_entropy(zt @ wl.T + bl, yt) - torch.nn.functional.cross_entropy(
            zt @ w0.T + b0, yt))  # fmt: skip
        assert delta == pytest.approx(change, rel=1e-4, abs=1e-9)

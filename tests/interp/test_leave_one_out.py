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

"""Leave-one-out check of ``interp`` influence (Koh & Liang 2017, Figure 2), on real digits.

A convex model, multinomial logistic regression on fixed features with L2 weight decay, is
trained to its optimum. For a few test images, the influence predicts how each training image's
removal changes the test loss; we then actually retrain without it and compare.

Objective: ``R(theta) = 1/n sum_i loss_i(theta) + lam/2 ||theta||^2``, with Hessian ``H + lam I``
(``H`` the Hessian of the mean loss). Removing ``j`` is up-weighting by ``-1/n``, so the predicted
change of test loss is ``-I[t, j] / n`` with ``I = interp.influence_matrix(..., damping=lam)``.

    python examples/leave_one_out.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from torch import nn

import interp


def digit_features(n_train: int = 300, n_test: int = 100, dims: int = 12, seed: int = 0):
    """PCA features of scikit-learn's real 8x8 digits, standardised; float64 tensors."""
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))[: n_train + n_test]
    feats = PCA(dims, random_state=seed).fit_transform(x[idx])
    feats = (feats - feats.mean(0)) / feats.std(0)
    t = torch.from_numpy(feats)
    lab = torch.from_numpy(y[idx]).long()
    return t[:n_train], lab[:n_train], t[n_train:], lab[n_train:]


def train_to_optimum(model: nn.Linear, x, y, lam: float, weights: torch.Tensor | None = None) -> None:
    """Minimise ``1/n sum_i w_i loss_i + lam/2 ||theta||^2`` to machine precision with L-BFGS."""
    n = len(y)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = (w * F.cross_entropy(model(x), y, reduction="none")).sum() / n
        loss = loss + lam / 2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)


def leave_one_out_check(n_test_points: int = 3, n_removed: int = 30, lam: float = 1e-2, seed: int = 0) -> dict:
    """Predicted vs actual change of test loss for the most influential removals; returns Pearson r."""
    x_tr, y_tr, x_te, y_te = digit_features(seed=seed)
    torch.manual_seed(seed)
    model = nn.Linear(x_tr.shape[1], 10).double()
    train_to_optimum(model, x_tr, y_tr, lam)
    loader = [(x_tr, y_tr)]
    h = interp.hessian(model, loader, model)
    g_train = interp.per_example_grads(model, loader, model)
    with torch.no_grad():
        test_losses = F.cross_entropy(model(x_te), y_te, reduction="none")
    tests = test_losses.argsort(descending=True)[:n_test_points]  # high-loss points have the clearest signal
    g_test = interp.per_example_grads(model, [(x_te[tests], y_te[tests])], model)
    influence = interp.influence_matrix(g_test, g_train, h, damping=lam, method="cholesky")
    n = len(y_tr)
    predicted, actual = [], []
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for row, t in enumerate(tests.tolist()):
        for j in influence[row].abs().argsort(descending=True)[:n_removed].tolist():
            model.load_state_dict(state)
            weights = torch.ones(n, dtype=torch.float64)
            weights[j] = 0.0
            train_to_optimum(model, x_tr, y_tr, lam, weights)
            with torch.no_grad():
                new_loss = F.cross_entropy(model(x_te[t : t + 1]), y_te[t : t + 1])
            predicted.append(float(-influence[row, j] / n))
            actual.append(float(new_loss - test_losses[t]))
    model.load_state_dict(state)
    r = float(np.corrcoef(predicted, actual)[0, 1])
    return {"pearson": r, "predicted": np.array(predicted), "actual": np.array(actual)}


if __name__ == "__main__":
    result = leave_one_out_check()
    print(f"Pearson r between predicted and actual leave-one-out change of test loss: {result['pearson']:.5f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(result["actual"], result["predicted"], s=10)
        lim = np.abs(np.concatenate([result["actual"], result["predicted"]])).max() * 1.1
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.5)
        ax.set_xlabel("actual change in test loss")
        ax.set_ylabel("predicted (-I / n)")
        ax.set_title(f"leave-one-out, r = {result['pearson']:.4f}")
        fig.tight_layout()
        fig.savefig("leave_one_out.png", dpi=120)
        print("wrote leave_one_out.png")
    except ImportError:
        pass

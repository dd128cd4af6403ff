"""Influence on your own model with ``interp`` alone (no ``transfer`` import).

A small convolutional net of your own, trained here on scikit-learn's real 8x8 digits; then the
exact Hessian of its last layer, the influence of every training image on every test image at the
paper's cut-off and at the exact inverse, the class-match rates of the most helpful images, and the
class-sorted heatmap (the paper's Figure 7). Replace ``train_model`` and the loaders with yours.

    python examples/influence_own_model.py [--out influence_own_model.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import interp
from interp.viz import heatmap_figure


def digits(seed: int = 0):
    """scikit-learn's digits as ``(1, 8, 8)`` float tensors in [0, 1]: 1,000 training and 400 test images."""
    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(y))
    x = torch.tensor(x[idx] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y[idx])
    return TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:1400], y[1000:1400])


def train_model(train: TensorDataset, epochs: int = 30, seed: int = 0) -> nn.Module:
    """Any classifier whose last operation is an ``nn.Linear`` gets the closed-form head Hessian."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        for x, y in DataLoader(train, batch_size=100, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main(out: str | None = "influence_own_model.png") -> dict:
    train, test = digits()
    model = train_model(train)
    head = model[-1]  # the parameters to explain: here the final layer (330 parameters)
    tr, te = DataLoader(train, batch_size=256), DataLoader(test, batch_size=256)
    h = interp.hessian(model, tr, head)  # float64, Hessian of the MEAN training loss
    g_tr, g_te = interp.per_example_grads(model, tr, head), interp.per_example_grads(model, te, head)
    y_tr, y_te = train.tensors[1].numpy(), test.tensors[1].numpy()
    report = {}
    for rcond in ("paper", "exact"):
        inv = interp.pseudo_inverse(h, rcond=rcond, method="eigh")  # the cut-off is stated, the dropped part counted
        influence = interp.influence_matrix(g_te, g_tr, inv).numpy()  # (400, 1000), negative = helpful
        cm = interp.class_match(influence, y_te, y_tr, k=10)
        report[rcond] = {"kept": f"{inv.info()['rank_kept']}/{inv.info()['size']}", "top1": float(cm.per_rank[0]),
                         "at_least_3_of_5": cm.at_least_3_of_5, "influence": influence}  # fmt: skip
        print(f"rcond={rcond:<6} kept {report[rcond]['kept']} directions: top-1 class match {cm.per_rank[0]:.3f}, "
              f">= 3 of top 5 {cm.at_least_3_of_5:.3f}")  # fmt: skip
    if out:
        panels = [(f"rcond={r}", report[r]["influence"], y_te, y_tr) for r in report]
        heatmap_figure(panels).savefig(out, dpi=100)
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="influence_own_model.png", help="heatmap PNG")
    main(parser.parse_args().out)

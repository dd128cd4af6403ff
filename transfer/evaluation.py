"""Clean and PGD-robust accuracy of a classifier on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from transfer.attacks import PGDConfig, pgd_attack


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    attack: PGDConfig | None = None,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> dict:
    """Accuracy (fraction correct) of ``model`` in eval mode, and under ``attack`` if given.

    Returns ``{"n", "clean_acc"}`` plus ``"robust_acc"`` when ``attack`` is set.
    """
    model.eval()
    clean = robust = n = 0
    for x, y in tqdm(
        DataLoader(dataset, batch_size=batch_size, num_workers=workers), disable=not progress, desc="evaluate"
    ):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            clean += (model(x).argmax(1) == y).sum().item()
        if attack is not None:
            x_adv = pgd_attack(model, x, y, attack)
            with torch.no_grad():
                robust += (model(x_adv).argmax(1) == y).sum().item()
        n += len(y)
    out = {"n": n, "clean_acc": clean / max(n, 1)}
    if attack is not None:
        out["robust_acc"] = robust / max(n, 1)
    return out

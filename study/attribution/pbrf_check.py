"""Influence against the PBRF: the exactness check over the fine-tuned blocks (``validate-influence --pbrf``).

Leave-one-out by retraining asks more of influence than it claims: SGD on a non-convex network, from a fresh start,
with its own noise. Influence functions approximate the proximal Bregman response function instead (Bae et al.
2022; :mod:`interp.pbrf`): warm-started at the run's weights, its outputs held close by a Bregman term and its
parameters by a proximity term ``damping``, the removed image's loss subtracted. Here, for the training images the
``--retrain`` check would remove (the ``tests`` highest-loss test images' largest ``|I|`` under the first directory,
plus ``random`` others), the PBRF response of every parameter the run fine-tuned is solved to convergence, and each
test image's loss change is correlated with every setting's prediction ``-I[t, j] / n``: over the same pairs as
``--retrain``, and over every test image of the directories with every removed image. The frozen prefix runs once:
the response is that of the fine-tuned suffix on the prefix's features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from interp import pbrf_response, pbrf_whitening
from interp.curvature import as_eval_copy
from study.attribution.inputs import run_dampings
from study.attribution.retrain_loo import choose_pairs, same_test_images, score_pairs
from study.attribution.settings import DAMPING_RULES, setting_value
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.freezing import parse_blocks, split_frozen_prefix
from transfer.runs import RunDir
from transfer.transforms import build_transform
from transfer.zoo import load_source

# the budget of each solve: a ReLU block's PBRF is only piecewise smooth and L-BFGS stalls short of a tight
# tolerance (measured: 1e-4 of the start's whitened gradient is not always reached in 10,000 iterations, while the
# correlations no longer move after a few hundred); what each reached is reported
MAX_ROUNDS, MAX_ITER = 1, 300


def pbrf_damping(rule: str, settings: dict) -> float:
    """``--pbrf-damping``: a rule's name (``wd``, ``source``) resolved for the run, or a number > 0 (the PBRF's
    proximity term), parsed as ``--damping``'s values are."""
    value = setting_value("pbrf_damping", rule, tuple(DAMPING_RULES), high=None, low_open=True)
    return run_dampings(settings)[value] if value in DAMPING_RULES else value


def _features(prefix, images, device) -> torch.Tensor:
    """The frozen prefix's float64 outputs for a dataset of ``(x, y)``, in eval mode."""
    with torch.no_grad():
        return torch.cat([prefix(x.to(device, torch.float64)) for x, _ in DataLoader(images, batch_size=256)])


def pbrf_check(run: Path, results: list, tests: int, removals: int, random: int, seed: int, damping: str,
               epsilon: float | str, device: str, data_root: str | None,
               progress: bool) -> tuple[list[dict], list[list], dict]:  # fmt: skip
    """Every setting of the influence directories ``results`` (read, of ``run``) against the PBRF. Returns (per
    setting: its label, size, rank and the ``predicted`` / ``actual`` arrays over the pairs, and over every test
    image; the CSV rows ``[setting, test_index, train_index, kind, predicted, actual]``; what the solves reached).
    ``epsilon``: the image's weight goes down by ``epsilon / n`` (``auto``: per image, the largest epsilon <= 1 whose
    first-order move is 1e-3 of the weights' norm); the loss changes are divided by it, in the units of a removal's
    ``-I[t, j] / n``."""
    first = results[0]
    idx_test = same_test_images(results)
    rd = RunDir(run)
    settings = rd.recorded()
    lam = pbrf_damping(damping, settings)
    dev = resolve_device(device)
    src = load_source(run)
    split = split_frozen_prefix(src.model, parse_blocks(settings.get("blocks", "1")))
    prefix = as_eval_copy(split.prefix, torch.float64, dev)
    suffix = as_eval_copy(split.suffix, torch.float64, dev)
    train_raw, test_raw = load_raw_splits(settings["target"], data_root or settings.get("data_root"))
    t = build_transform(src.input_size, train=False)
    indices = np.asarray(first["idx_train"])
    h_train = _features(prefix, Transformed(Subset(train_raw, indices), t), dev)
    h_test = _features(prefix, Transformed(Subset(test_raw, idx_test), t), dev)
    y_train = torch.as_tensor(np.array(first["y_train"]), device=dev)
    y_test = torch.as_tensor(np.array(first["y_test"]), device=dev)

    def test_losses(theta: dict | None = None) -> np.ndarray:
        with torch.no_grad():
            logits = suffix(h_test) if theta is None else functional_call(suffix, theta, (h_test,))
            return torch.nn.functional.cross_entropy(logits, y_test, reduction="none").cpu().numpy()

    base = test_losses()
    pairs = choose_pairs(np.asarray(first.setting(0)[0]), base, tests, removals, random, seed)
    removed = sorted({j for _, j, _ in pairs})
    whitening = pbrf_whitening(suffix, h_train, y_train, damping=lam)
    actual, solves = {}, []
    bar = tqdm(removed, desc="PBRF responses", disable=not progress)
    for j in bar:
        theta, info = pbrf_response(
            suffix,
            h_train,
            y_train,
            j,
            damping=lam,
            whitening=whitening,
            epsilon=epsilon,
            max_rounds=MAX_ROUNDS,
            max_iter=MAX_ITER,
        )
        if info["diverged"]:
            raise UserError(f"the PBRF of training image {j} diverged at epsilon {info['epsilon']:g}, damping {lam:g}: "
                            "its objective has no minimum near the run's weights (the down-weighted loss's negative "
                            "curvature beats the damping); lower --pbrf-epsilon or raise --pbrf-damping")  # fmt: skip
        actual[j] = (test_losses(theta) - base) / info["epsilon"]
        solves.append(info)
        bar.set_postfix(iterations=info["iterations"], gradient=f"{info['whitened_grad_norm']:.1e}")
    per_setting, rows = score_pairs(results, pairs, actual, len(indices), idx_test, every=True)
    reached = {"damping": lam, "damping_rule": damping if damping in DAMPING_RULES else None, "epsilon": epsilon,
               "epsilons": [s["epsilon"] for s in solves],
               "removed": len(removed), "converged": sum(s["converged"] for s in solves),
               "whitened": whitening is not None, "iterations": [s["iterations"] for s in solves],
               "worst_grad_norm_ratio": max(s["grad_norm"] / max(s["grad_norm_before"], 1e-300) for s in solves),
               "worst_whitened_grad_norm_ratio": max(s["whitened_grad_norm"] / max(s["whitened_grad_norm_before"],
                                                                                   1e-300) for s in solves),
               "largest_relative_move": max(s["relative_move"] for s in solves)}  # fmt: skip
    return per_setting, rows, reached

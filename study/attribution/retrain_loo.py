"""Leave-one-out by retraining the whole fine-tune: the check of influence over the fine-tuned blocks.

The head-only check (:mod:`study.attribution.leave_one_out`) refits a convex head, where leave-one-out is
exact and cheap. Influence over the trainable blocks claims more: that removing training image ``j`` from
the run's fine-tune (blocks and head, the same settings and seed, SGD) changes test image ``t``'s loss by
about ``-I[t, j] / n``. Here the run is retrained once per removed image (resumable run directories under
``OUT/loo/runs``, on any executor: local worker processes, Ray, or inline) and the actual change is measured
against the run itself. The pairs: the ``tests`` test images of highest loss under the run, and for each the ``removals`` training images of largest
``|I|`` under the first setting of the first influence directory, plus ``random`` others; every setting
of every directory is scored on the same pairs. SGD retraining carries noise of its own (a removed image
changes every later batch), which bounds what any attribution can reach here: read the random removals'
spread as that floor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from study.attribution.retraining import Retraining, logits_of, measured, retrain
from study.sweeps.executors import Executor
from transfer.errors import UserError
from transfer.runs import RunDir


def choose_pairs(influence: np.ndarray, base_loss: np.ndarray, tests: int, removals: int, random: int,
                 seed: int) -> list[tuple[int, int, str]]:  # fmt: skip
    """``(test row, train position, "top" | "random")``: the highest-loss test rows, their largest ``|I|``
    training images and random others."""
    rng = np.random.default_rng(seed)
    n = influence.shape[1]
    pairs = []
    for t in np.argsort(-base_loss, kind="stable")[:tests]:
        top = np.argsort(-np.abs(influence[t]), kind="stable")[:removals]
        rest = np.setdiff1d(np.arange(n), top)
        pairs += [(int(t), int(j), "top") for j in top]
        pairs += [(int(t), int(j), "random") for j in rng.choice(rest, size=min(random, len(rest)), replace=False)]
    return pairs


def retrained_loo(run: Path, results: list, out: Path, tests: int, removals: int, random: int,
                  seed: int, device: str, data_root: str | None, executor: Callable[[], Executor],
                  progress: bool) -> tuple[list[dict], list[list]]:  # fmt: skip
    """Predictions of every setting of the influence directories ``results`` (from
    :func:`study.attribution.lds.read_influence_of`) beside retrained leave-one-out; returns (per setting:
    its label, size, rank and the ``predicted`` / ``actual`` arrays; CSV rows ``[setting, test_index,
    train_index, kind, predicted, actual]``)."""
    first = results[0]
    idx_test = same_test_images(results)
    settings = RunDir(run).recorded()
    where = data_root or settings.get("data_root")
    labels = np.asarray(first["y_test"])
    base_loss = measured(logits_of([run], settings["target"], where, idx_test, device), labels, "loss")[0]
    pairs = choose_pairs(np.asarray(first.setting(0)[0]), base_loss, tests, removals, random, seed)
    n = len(np.asarray(first["y_train"]))
    removed = sorted({j for _, j, _ in pairs})
    keep = [Retraining(f"m{k:03d}", np.setdiff1d(np.arange(n), [j])) for k, j in enumerate(removed)]
    runs = retrain(run, out / "runs", keep, device, executor, progress, desc="leave-one-out retrainings")
    logits = logits_of(runs, settings["target"], where, idx_test, device, progress, desc="LOO outputs")
    losses = measured(logits, labels, "loss")
    actual = {j: losses[k] - base_loss for k, j in enumerate(removed)}
    return score_pairs(results, pairs, actual, n, idx_test)


def same_test_images(results: list) -> np.ndarray:
    """The test indices every influence directory of ``results`` shares; refused where one has others."""
    first = results[0]
    idx_test = np.asarray(first["idx_test"])
    for res in results:
        if not np.array_equal(np.asarray(res["idx_test"]), idx_test):
            raise UserError(f"{res.root} has other test images than {first.root}; compute them with the same --test")
    return idx_test


def score_pairs(results: list, pairs: list[tuple[int, int, str]], actual: dict[int, np.ndarray], n: int,
                idx_test: np.ndarray, every: bool = False) -> tuple[list[dict], list[list]]:  # fmt: skip
    """Every setting of ``results`` beside the measured changes ``actual[j]`` (over all test images) of removing
    training image ``j``: per setting its label, size, rank and the ``predicted`` (``-I[t, j] / n``) / ``actual``
    arrays over ``pairs`` (``every``: also over every test image x removed image); and the CSV rows ``[setting,
    test_index, train_index, kind, predicted, actual]`` in dataset indices (``idx_test[t]`` and the first directory's
    ``idx_train[j]``), as the head's leave-one-out check writes them."""
    train_ids = np.asarray(results[0]["idx_train"])
    removed = sorted(actual)
    rows, per_setting = [], []
    for res in results:
        for st in res.settings:
            inf = np.asarray(res.setting(st["index"])[0])
            label = f"{Path(res.root).name}: {res.meta.get('inverse', {}).get('method', '?')}, {st.get('label', '')}"
            predicted = np.array([-inf[t, j] / n for t, j, _ in pairs])
            real = np.array([actual[j][t] for t, j, _ in pairs])
            row = {"setting": label, "rank_kept": st.get("rank_kept"), "size": st.get("size"),
                   "predicted": predicted, "actual": real, "n_pairs": len(pairs)}  # fmt: skip
            if every:
                row["every_predicted"] = np.concatenate([-inf[:, j] / n for j in removed])
                row["every_actual"] = np.concatenate([actual[j] for j in removed])
            per_setting.append(row)
            rows += [[label, int(idx_test[t]), int(train_ids[j]), kind, p, a]
                     for (t, j, kind), p, a in zip(pairs, predicted, real, strict=True)]  # fmt: skip
    return per_setting, rows

"""The ground truth an attribution is scored against, and how reliable it is.

``M`` class-covering random subsets ``S_m`` of a fraction of the run's training images (seeds ``seed + m``); the run's
fine-tune retrained ``R`` times on each (repeat ``r`` with training seed ``run seed + r``, the run's other settings
unchanged); each test image's measured output (:data:`study.attribution.retraining.TARGETS`: the loss, or TRAK's
margin) averaged over the repeats: ``y[m, i] = mean_r f_i(S_m, r)``. That average is what an attribution's summed
influence over ``S_m`` is correlated with (:mod:`study.attribution.lds`).

Its reliability says how much of it is the subset's effect rather than the seeds' noise: the repeats are split into
two halves, each half's average is correlated with the other's over the subsets (Spearman per test image, averaged
over the test images and over random splits), and the split-half correlation ``r`` is stepped up to all ``R`` repeats
by Spearman-Brown, ``rho = 2 r / (1 + r)``. A perfect attribution correlates with the true subset effects; with a
measured output of reliability ``rho`` its correlation can reach only about ``sqrt(rho)``: the ceiling any method can
reach here, beside which every LDS is read (and divided by it). If seed noise is as large as the subset's effect, one
retraining per subset caps the LDS near 0.71, five near 0.91.

Saved in TRAK's layout (``ground_truth/`` under the LDS directory) so that any other library's scores can be evaluated
on it: ``masks.npy`` ``(M, N)`` bool (which of the run's ``N`` training images each subset holds, in the order of
``train_indices.npy``), ``subsets.npy`` ``(M, size)`` (the same as positions), ``targets.npy`` ``(M, Q)`` (the averaged
output named in ``ground_truth.json``), ``outputs.npy`` ``(M, R, Q)`` (every repeat's), ``logits.npy`` ``(M, R, Q,
C)``, ``test_indices.npy`` ``(Q,)`` and ``train_indices.npy`` ``(N,)`` (indices into the target's test and training
splits), and ``ground_truth.json`` (the definitions, seeds, sizes and reliability).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.attribution.retraining import Retraining, logits_of, measured, repeat_seed, retrain, run_seed
from study.sweeps.executors import Executor
from transfer.datasets import load_raw_splits
from transfer.errors import UserError
from transfer.files import atomic_write, atomic_write_json
from transfer.runs import RunDir
from transfer.subsets import class_covering_subset

MIN_SUBSETS = 5
MAX_RETRAININGS = 10_000  # fine-tunes one ground truth may ask for (TRAK and dattri use 100 to 300; SOURCE 100 x 50)
SPLITS = 20  # random half-splits of the repeats the split-half correlation is averaged over


def subsets(labels: np.ndarray, m: int, fraction: float, seed: int) -> list[np.ndarray]:
    """``m`` class-covering random subsets of ``fraction`` of the positions ``0..n-1`` (sorted), seeds ``seed + k``."""
    n = len(labels)
    size = max(len(np.unique(labels)), int(round(fraction * n)))
    return [np.sort(class_covering_subset(np.asarray(labels), size, seed + k)) for k in range(m)]


def retraining_name(subset: int, repeat: int) -> str:
    """``m007`` for repeat 0 (the name earlier versions gave the one retraining per subset), ``m007r2`` after."""
    return f"m{subset:03d}" if repeat == 0 else f"m{subset:03d}r{repeat}"


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (both ``(M, Q)``), ties given
    their average rank; NaN where either column is constant."""
    from scipy.stats import rankdata  # scipy.stats takes most of a second to import: not at every command's start

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    denom = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(0) / np.where(denom > 0, denom, 1.0), np.nan)


def reliability(outputs: np.ndarray, splits: int = SPLITS, seed: int = 0) -> dict | None:
    """The reliability of ``outputs.mean(1)`` for outputs ``(M, R, Q)``: the split-half correlation (per test image,
    over random half-splits of the repeats), its Spearman-Brown step-up to ``R`` and the ceiling ``sqrt(rho)``, with
    a 95% bootstrap interval over test images; None for fewer than 2 repeats (nothing to split)."""
    m, r, q = outputs.shape
    if r < 2:
        return None
    rng = np.random.default_rng(seed)
    per_image = np.zeros(q)
    counted = np.zeros(q)
    for _ in range(splits if r > 2 else 1):
        order = rng.permutation(r)
        half_a, half_b = outputs[:, order[: r // 2]].mean(1), outputs[:, order[r // 2 :]].mean(1)
        rho = spearman_columns(half_a, half_b)
        ok = np.isfinite(rho)
        per_image[ok] += rho[ok]
        counted[ok] += 1
    per_image = np.where(counted > 0, per_image / np.maximum(counted, 1), np.nan)
    values = per_image[np.isfinite(per_image)]
    if len(values) == 0:
        return None

    def summary(split_half: float) -> tuple[float, float]:
        rho = 2 * split_half / (1 + split_half) if split_half > -1 else -1.0
        return rho, float(np.sqrt(max(rho, 0.0)))

    boots = [summary(float(values[rng.integers(0, len(values), len(values))].mean())) for _ in range(1000)]
    rho, ceiling = summary(float(values.mean()))
    return {
        "repeats": r,
        "split_half": float(values.mean()),
        "reliability": rho,
        "ceiling": ceiling,
        "ceiling_interval": [float(np.quantile([c for _, c in boots], q)) for q in (0.025, 0.975)],
        "n_test": int(len(values)),
        "definition": "split-half Spearman of the subsets' averaged outputs (per test image, over random halves of the "
        "repeats), stepped up to all repeats by Spearman-Brown (rho = 2 r / (1 + r)); ceiling = sqrt(rho)",
    }


@dataclass
class GroundTruth:
    """What :func:`build` measured (see the module's docstring for the layout)."""

    chosen: list[np.ndarray]  # M subsets, positions into the run's training images
    n_train: int
    logits: np.ndarray  # (M, R, Q, C)
    labels: np.ndarray  # (Q,)
    test_indices: np.ndarray  # (Q,)
    train_indices: np.ndarray  # (N,)
    seeds: list[int]  # the training seed of each repeat
    subset_seed: int
    fraction: float

    def outputs(self, target: str) -> np.ndarray:
        """Every repeat's measured ``target``, ``(M, R, Q)``."""
        return measured(self.logits, self.labels, target)

    def targets(self, target: str) -> np.ndarray:
        """The measured ``target`` averaged over the repeats, ``(M, Q)``."""
        return self.outputs(target).mean(1)

    def columns(self, idx_test: np.ndarray) -> GroundTruth:
        """The same ground truth on the test images ``idx_test`` (a subset of its own)."""
        where = {int(t): k for k, t in enumerate(self.test_indices)}
        missing = [int(t) for t in idx_test if int(t) not in where]
        if missing:
            raise UserError(f"the ground truth has no outputs for test images {missing[:5]}...")
        cols = np.array([where[int(t)] for t in idx_test])
        return GroundTruth(self.chosen, self.n_train, self.logits[:, :, cols], self.labels[cols],
                           np.asarray(idx_test), self.train_indices, self.seeds, self.subset_seed,
                           self.fraction)  # fmt: skip

    def masks(self) -> np.ndarray:
        out = np.zeros((len(self.chosen), self.n_train), dtype=bool)
        for k, positions in enumerate(self.chosen):
            out[k, positions] = True
        return out

    def save(self, root: Path, target: str, extra: dict) -> None:
        """TRAK's layout under ``root`` (see the module's docstring); ``ground_truth.json`` last."""
        root.mkdir(parents=True, exist_ok=True)
        arrays = {"masks": self.masks(), "subsets": np.stack(self.chosen), "targets": self.targets(target),
                  "outputs": self.outputs(target), "logits": self.logits.astype(np.float32),
                  "test_indices": self.test_indices, "train_indices": self.train_indices}  # fmt: skip
        for name, array in arrays.items():
            atomic_write(root / f"{name}.npy", lambda f, a=array: np.save(f, a))
        atomic_write_json(root / "ground_truth.json", {
            "layout": {"masks": "(M, N) bool: subset m holds training image n (train_indices[n] of the split)",
                       "subsets": "(M, size) positions of each subset's images", "targets": "(M, Q) the measured "
                       "output averaged over the repeats", "outputs": "(M, R, Q) every repeat's measured output",
                       "logits": "(M, R, Q, C) float32", "test_indices": "(Q,) into the target's test split",
                       "train_indices": "(N,) into the target's training split: the run's training images"},
            "target": target, "subsets": len(self.chosen), "repeats": len(self.seeds), "seeds": self.seeds,
            "subset_seed": self.subset_seed, "fraction": self.fraction, **extra})  # fmt: skip


def build(run: Path, out: Path, m: int, repeats: int, fraction: float, seed: int, idx_test: np.ndarray, device: str,
          data_root: str | None, executor: Callable[[], Executor], progress: bool) -> GroundTruth:  # fmt: skip
    """Retrain the run on ``m`` subsets ``repeats`` times each (run directories under ``out``; resumable) and measure
    every model on the test images ``idx_test``."""
    if m < MIN_SUBSETS:
        raise UserError(f"--lds {m}: a rank correlation over fewer than {MIN_SUBSETS} subsets means nothing")
    if m * repeats > MAX_RETRAININGS:
        raise UserError(f"--lds {m} x --repeats {repeats} = {m * repeats} retrainings, more than {MAX_RETRAININGS}")
    rd = RunDir(run)
    subset = json.loads(rd.subset.read_text())
    labels = np.asarray(subset["labels"], dtype=np.int64)
    chosen = subsets(labels, m, fraction, seed)
    base = run_seed(run)
    seeds = [repeat_seed(base, r) for r in range(repeats)]
    jobs = [Retraining(retraining_name(k, r), positions, seeds[r]) for k, positions in enumerate(chosen)
            for r in range(repeats)]  # fmt: skip
    runs = retrain(run, out, jobs, device, executor, progress, desc="LDS retrainings")
    settings = rd.recorded()
    where = data_root or settings.get("data_root")
    _, test_raw = load_raw_splits(settings["target"], where)
    logits = logits_of(runs, settings["target"], where, idx_test, device, progress, desc="LDS outputs")
    logits = logits.reshape(m, repeats, len(idx_test), -1)
    return GroundTruth(chosen, len(labels), logits, np.asarray(test_raw.targets)[idx_test], np.asarray(idx_test),
                       np.asarray(subset["indices"], dtype=np.int64), seeds, seed, fraction)  # fmt: skip

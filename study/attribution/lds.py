"""The linear datamodeling score (LDS) of influence matrices, from the run's own fine-tune retrained on subsets.

For ``M`` random subsets ``S_m`` of the run's training images (a fraction of them each, class-covering,
seeds ``seed + m``), the run's fine-tune is repeated with the same settings and seed on ``S_m`` alone
(resumable run directories under ``OUT/lds/runs``), and each test image's loss ``L_i(S_m)`` and margin
(its logit minus the largest other) are measured. An influence matrix ``I`` (negative = helpful)
predicts, to first order, a loss that grows with ``sum_{j in S_m} I[i, j]``; the score of test image
``i`` is the Spearman correlation over the ``M`` subsets of that sum with ``L_i(S_m)``, and the LDS is
its mean over the test images, with a bootstrap interval over them (Park et al. 2023, TRAK; dattri's
benchmark uses the same definition). The margin gives a second score, correlated with the minus sum.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from interp import bootstrap_interval
from study.attribution.inputs import identity_mismatch, run_identity
from study.attribution.store import InfluenceDir
from study.sweeps.executors import Executor
from study.sweeps.grid import RunSpec
from study.sweeps.jobs import run_jobs
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.finetune import FinetuneConfig
from transfer.runs import RunDir
from transfer.subsets import class_covering_subset
from transfer.transforms import build_transform
from transfer.zoo import load_source

MIN_SUBSETS = 5
MAX_RETRAININGS = 10_000  # fine-tunes one ground truth may ask for (TRAK and dattri use 100 to 300; SOURCE 100 x 50)


def subsets(labels: np.ndarray, m: int, fraction: float, seed: int) -> list[np.ndarray]:
    """``m`` class-covering random subsets of ``fraction`` of the positions ``0..n-1`` (sorted), seeds ``seed + k``."""
    n = len(labels)
    size = max(len(np.unique(labels)), int(round(fraction * n)))
    return [np.sort(class_covering_subset(np.asarray(labels), size, seed + k)) for k in range(m)]


def retrain(run: Path, out: Path, chosen: list[np.ndarray], device: str, executor: Callable[[], Executor],
            progress: bool, desc: str = "retrainings") -> list[Path]:  # fmt: skip
    """The run's fine-tune repeated on each subset of its training images (positions into its subset.json), as
    runs ``out/m000``, ``m001``, ... on the executor ``executor()`` makes (:func:`study.sweeps.jobs.run_jobs`):
    finished ones are kept, killed ones resumed."""
    settings = RunDir(run).recorded()
    run_indices = np.asarray(json.loads((run / "subset.json").read_text())["indices"], dtype=np.int64)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    base = {k: v for k, v in settings.items() if k in fields}
    epochs = settings["resolved"]["epochs"]
    jobs = []
    for k, positions in enumerate(chosen):
        job = base | {"subset": str(len(positions)), "epochs": str(epochs), "eval_every": str(epochs), "device": device}
        FinetuneConfig(**job)  # every job's settings checked before any starts
        jobs.append((RunSpec(f"m{k:03d}", job, tuple(int(i) for i in run_indices[positions])), out / f"m{k:03d}"))
    run_jobs(jobs, executor(), progress=progress, desc=desc)
    return [d for _, d in jobs]


def outputs(runs: list[Path], target: str, data_root: str | None, idx_test: np.ndarray, device: str):
    """``(loss, margin)`` ``(M, n_test)`` of each retrained model on the test images ``idx_test``."""
    dev = resolve_device(device)
    _, test_raw = load_raw_splits(target, data_root)
    losses, margins = [], []
    for run in runs:
        src = load_source(run)
        data = Transformed(Subset(test_raw, idx_test), build_transform(src.input_size, train=False))
        model = src.model.to(dev).eval()
        lo, ma = [], []
        with torch.no_grad():
            for x, y in DataLoader(data, batch_size=256):
                z = model(x.to(dev)).double().cpu()
                lo.append(torch.nn.functional.cross_entropy(z, y, reduction="none"))
                own = z.gather(1, y[:, None]).squeeze(1)
                other = z.scatter(1, y[:, None], float("-inf")).max(1).values
                ma.append(own - other)
        losses.append(torch.cat(lo).numpy())
        margins.append(torch.cat(ma).numpy())
    return np.stack(losses), np.stack(margins)


def score(influence: np.ndarray, chosen: list[np.ndarray], actual: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Per test image: Spearman over subsets of ``sign * sum_{j in S_m} I[i, j]`` with ``actual[m, i]``
    (NaN where either side is constant)."""
    from scipy.stats import spearmanr  # scipy.stats takes most of a second to import: not at every command's start

    masks = np.zeros((len(chosen), influence.shape[1]))
    for k, positions in enumerate(chosen):
        masks[k, positions] = 1.0
    predicted = sign * (masks @ np.asarray(influence, dtype=np.float64).T)  # (M, n_test)
    out = np.full(influence.shape[0], np.nan)
    for i in range(influence.shape[0]):
        if np.ptp(predicted[:, i]) > 0 and np.ptp(actual[:, i]) > 0:
            out[i] = spearmanr(predicted[:, i], actual[:, i])[0]
    return out, predicted


def read_influence_of(run: Path, influence_dirs: list[Path]) -> list:
    """The influence directories, read, each checked to have been computed from ``run``: from its path, and from the
    run now there (not an earlier one deleted and made again at the same path: :func:`identity_mismatch`)."""
    results = [InfluenceDir(d).read() for d in influence_dirs]
    now = run_identity(run)
    for d, res in zip(influence_dirs, results, strict=True):
        if Path(res.meta["config"]["run"]).resolve() != run.resolve():
            raise UserError(f"{d} was computed from {res.meta['config']['run']}, not from {run}")
        why = identity_mismatch(res.meta, res["idx_train"], run, now)
        if why:
            raise UserError(f"{d} was computed from an earlier run at {run} ({why}); compute it again: "
                            f"robust-transfer influence --run {run} --out {d}")  # fmt: skip
    return results


def lds_report(run: Path, results: list, out: Path, m: int, fraction: float, seed: int, device: str,
               data_root: str | None, executor: Callable[[], Executor], progress: bool) -> dict:  # fmt: skip
    """Retrain on ``m`` subsets (on ``executor()``), measure, and score every setting of every influence
    directory of ``run`` (``results``: from :func:`read_influence_of`)."""
    if m < MIN_SUBSETS:
        raise UserError(f"--lds {m}: a rank correlation over fewer than {MIN_SUBSETS} subsets means nothing")
    y_train = np.asarray(results[0]["y_train"])
    chosen = subsets(y_train, m, fraction, seed)
    settings = RunDir(run).recorded()
    runs = retrain(run, out / "runs", chosen, device, executor, progress, desc="LDS retrainings")
    rows, scatter, measured = [], {}, {}
    for res in results:
        d = res.root
        idx_test = np.asarray(res["idx_test"])
        key = idx_test.tobytes()  # directories of the same test images share one evaluation of the retrained models
        if key not in measured:
            measured[key] = outputs(runs, settings["target"], data_root or settings.get("data_root"), idx_test, device)
        loss, margin = measured[key]
        for st in res.settings:
            inf, _ = res.setting(st["index"])
            per_loss, predicted = score(inf, chosen, loss)
            per_margin, _ = score(inf, chosen, margin, sign=-1.0)
            ok = per_loss[np.isfinite(per_loss)]
            iv = bootstrap_interval(ok) if len(ok) > 1 else (float("nan"), float("nan"))
            method = res.meta.get("inverse", {}).get("method", "?")
            label = f"{Path(d).name}: {method}, {st.get('label', '')}".rstrip(", ")
            rows.append({"influence": str(d), "method": method, "setting": st.get("label"), "lds": float(np.mean(ok)),
                         "interval": list(iv), "lds_margin": float(np.nanmean(per_margin)), "n_test": int(len(ok)),
                         "params": _selection(res.meta)})  # fmt: skip
            scatter[f"{label}\nLDS {np.mean(ok):+.3f} [{iv[0]:+.3f}, {iv[1]:+.3f}]"] = (predicted, loss)
    return {"subsets": m, "fraction": fraction, "seed": seed, "subset_size": int(len(chosen[0])),
            "n_train": int(len(y_train)), "definition": __doc__.split("\n\n")[1].replace("\n", " "),
            "scores": rows}, scatter  # fmt: skip


def _selection(meta: dict) -> str:
    """What an influence directory differentiated: ``head`` or ``trainable``/paths as asked, with the count."""
    asked = meta.get("config", {}).get("params", "fc")
    return "head" if asked in ("fc", "head") else f"{asked} ({len(meta.get('params', []))} tensors)"


def lds_figure(scatter: dict):
    """Predicted sum against the retrained loss, each test image standardised, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scatter), figsize=(4.2 * len(scatter), 4), squeeze=False)
    for ax, (label, (pred, actual)) in zip(axes[0], scatter.items(), strict=True):
        z = lambda a: (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), 1.0)  # noqa: E731
        ax.scatter(z(pred).ravel(), z(actual).ravel(), s=4, alpha=0.4)
        ax.set_xlabel("sum of I over the subset (z per test image)", fontsize=8)
        ax.set_ylabel("retrained test loss (z per test image)", fontsize=8)
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return fig

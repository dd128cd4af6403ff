"""The run's fine-tune repeated: on other training images, with other training seeds, on any executor; and what the
retrained models output on test images.

Every retraining is an ordinary, resumable run directory (the same command after a kill keeps the finished ones and
continues the interrupted ones: :func:`study.sweeps.jobs.run_jobs`), made from the run's own recorded settings; what
varies is only which of the run's training images it sees (positions into its ``subset.json``) and its seed (head
initialisation, batch order, augmentation). The linear datamodeling score retrains on subsets, leave-one-out without
one image, and an ensemble on the same images with other seeds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from study.sweeps.executors import Executor
from study.sweeps.grid import RunSpec
from study.sweeps.jobs import run_jobs
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.finetune import FinetuneConfig
from transfer.runs import RunDir
from transfer.transforms import build_transform
from transfer.zoo import load_source


@dataclass(frozen=True)
class Retraining:
    """One retraining of the run: its directory's name, the positions of the run's training images it trains on
    (``None``: all of them) and its seed (``None``: the run's)."""

    name: str
    positions: np.ndarray | None = None
    seed: int | None = None


def repeat_seed(run_seed: int, repeat: int) -> int:
    """The training seed of repeat ``repeat`` of a run trained with ``run_seed``: the run's own for repeat 0, then
    ``run_seed + repeat`` (the subset is given, so the seed draws only the head's initialisation, the batch order and
    the augmentation)."""
    return run_seed + repeat


def run_seed(run: Path) -> int:
    return int(RunDir(run).recorded()["seed"])


def retraining_jobs(run: Path, out: Path, retrainings: Sequence[Retraining], device: str) -> list[tuple[RunSpec, Path]]:
    """Every retraining as a job ``(spec, out/<name>)`` of :func:`study.sweeps.jobs.run_jobs`, made from the run's
    recorded settings; each job's settings are checked before any starts."""
    settings = RunDir(run).recorded()
    run_indices = np.asarray(json.loads((run / "subset.json").read_text())["indices"], dtype=np.int64)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    base = {k: v for k, v in settings.items() if k in fields}
    epochs = settings["resolved"]["epochs"]
    jobs = []
    for r in retrainings:
        positions = np.arange(len(run_indices)) if r.positions is None else np.asarray(r.positions)
        job = base | {"subset": str(len(positions)), "epochs": str(epochs), "eval_every": _eval_every(out / r.name),
                      "device": device}  # fmt: skip
        if r.seed is not None:
            job["seed"] = int(r.seed)
        FinetuneConfig(**job)
        jobs.append((RunSpec(r.name, job, tuple(int(i) for i in run_indices[positions])), out / r.name))
    return jobs


def _eval_every(run_dir: Path) -> str:
    """A retraining is tested after its last epoch alone (``last``: what it scores is its final model); one that an
    earlier version started, tested after epoch 1 too, keeps its recorded setting, so it resumes instead of being
    refused (the evaluations never change what is trained)."""
    recorded = RunDir(run_dir).recorded().get("eval_every") if (run_dir / "config.json").exists() else None
    return str(recorded) if recorded is not None else "last"


def retrain(run: Path, out: Path, retrainings: Sequence[Retraining], device: str, executor: Callable[[], Executor],
            progress: bool, desc: str = "retrainings") -> list[Path]:  # fmt: skip
    """Every retraining as the run directory ``out/<name>`` on the executor ``executor()`` makes; returns the
    directories in the order given."""
    jobs = retraining_jobs(run, out, retrainings, device)
    run_jobs(jobs, executor(), progress=progress, desc=desc)
    return [d for _, d in jobs]


# the transformed test images are kept across runs of one input size up to this many bytes (100 digits at 28 px:
# 0.9 MB; 10,000 images at 224 px: 6 GB, transformed again per run instead)
KEEP_TEST_BYTES = 1 << 30


def logits_of(runs: Sequence[Path], target: str, data_root: str | None, idx_test: np.ndarray, device: str,
              progress: bool = False, desc: str = "test outputs") -> np.ndarray:  # fmt: skip
    """The logits ``(len(runs), Q, C)`` (float64) of each run's model on the test images ``idx_test`` of ``target``.

    The deterministic test transform runs once for all runs of one input size where its result fits
    :data:`KEEP_TEST_BYTES`, once per run otherwise (the same batches either way)."""
    dev = resolve_device(device)
    _, test_raw = load_raw_splits(target, data_root)
    kept: dict[int, list[torch.Tensor]] = {}
    out = []
    for run in tqdm(runs, desc=desc, disable=not progress):
        src = load_source(run)
        size = src.input_size
        batches = kept.get(size)
        if batches is None:
            data = Transformed(Subset(test_raw, idx_test), build_transform(size, train=False))
            batches = (x for x, _ in DataLoader(data, batch_size=256))
            if len(idx_test) * 3 * size * size * 4 <= KEEP_TEST_BYTES:
                batches = kept[size] = list(batches)
        model = src.model.to(dev).eval()
        with torch.no_grad():
            out.append(torch.cat([model(x.to(dev)).double().cpu() for x in batches]))
    return torch.stack(out).numpy()


TARGETS = {
    "loss": "the test image's cross-entropy loss",
    "margin": "TRAK's margin: the correct logit minus the log-sum-exp of the other logits",
}


def measured(logits: np.ndarray, labels: np.ndarray, target: str) -> np.ndarray:
    """The measured output ``target`` (:data:`TARGETS`) of logits ``(..., Q, C)`` for labels ``(Q,)``: ``(..., Q)``.

    The loss is ``log-sum-exp(z) - z_y``; TRAK's margin is ``z_y - log-sum-exp_{c != y} z_c`` (earlier versions
    reported as "margin" the correct logit minus the *largest* other). For one model the two rank test images'
    changes the same way (the loss is ``log(1 + exp(-margin))``), not once outputs are averaged over repeats.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(np.array(labels), dtype=torch.long).expand(z.shape[:-1])
    own = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if target == "loss":
        return (torch.logsumexp(z, -1) - own).numpy()
    if target == "margin":
        others = z.scatter(-1, y.unsqueeze(-1), float("-inf"))
        return (own - torch.logsumexp(others, -1)).numpy()
    raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")


def target_sign(target: str) -> float:
    """+1 where the target grows with the loss (an influence sum predicts it directly), -1 where it falls."""
    return 1.0 if target == "loss" else -1.0

"""What influence reads from a finished fine-tuning run: its model, its training subset and test images, its weight decay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.attribution.settings import InfluenceConfig
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.errors import UserError
from transfer.files import read_json
from transfer.runs import RunDir
from transfer.subsets import class_covering_subset
from transfer.transforms import build_transform
from transfer.zoo import load_source


def load_run(cfg: InfluenceConfig):
    run = RunDir(cfg.run)
    if not Path(cfg.run).is_dir():
        raise UserError(f"--run {cfg.run} is not a directory; give a run directory from robust-transfer finetune")
    settings = run.recorded()
    if "target" not in settings or "resolved" not in settings:
        raise UserError(
            f"{cfg.run} is not a fine-tuning run (a pretrain run trains a source, it has no target); "
            "give a run directory from robust-transfer finetune"
        )
    if not run.finished():
        raise UserError(f"{cfg.run} has not finished (no summary.json); continue it with finetune --resume first")
    try:
        resolution = int(settings["resolved"]["resolution"])
        indices = np.asarray(read_json(run.subset, "run directory")["indices"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run.config} or {run.subset} lacks the resolution or the training indices") from None
    source = load_source(run.root)
    # the data root given now, else the one the run was fine-tuned with (its config.json records it)
    train_raw, test_raw = load_raw_splits(settings["target"], cfg.data_root or settings.get("data_root"))
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(train_raw):
        raise UserError(f"{run.subset} holds indices outside the {len(train_raw)} training images of the target")
    if cfg.test == "all":
        idx_test = np.arange(len(test_raw))
    else:
        idx_test = class_covering_subset(test_raw.targets, int(cfg.test), seed=0, flag="--test")
    t = build_transform(resolution, train=False)
    train = Transformed(Subset(train_raw, indices), t)
    test = Transformed(Subset(test_raw, idx_test), t)
    return settings, source.model, train, test, indices, idx_test


def run_weight_decay(settings: dict) -> float:
    """The weight decay a run was fine-tuned with (its L2 strength on every parameter, the head's bias too)."""
    try:
        return float(settings.get("weight_decay", 0.0))
    except (TypeError, ValueError):
        raise UserError(
            f"the run's config.json holds a weight_decay that is not a number: {settings['weight_decay']!r}"
        ) from None


def output_bytes(n_train: int, n_test: int) -> int:
    """Bytes of the two float64 influence matrices and the label files, checked before anything is computed.

    ``hessian.npy`` is left out: a disk that fills while it is written ends in a one-line error and
    an incomplete directory, whereas the memory-mapped matrices are checked again by ``interp``
    right before they are created.
    """
    return 8 * (n_test * n_train + n_train * n_train) + 8 * (2 * n_train + 2 * n_test)

"""What influence reads from a finished fine-tuning run: its model, its training subset and test images, its weight decay."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from study.attribution.settings import SHARED, InfluenceConfig
from study.attribution.store import InfluenceDir
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.errors import UserError
from transfer.files import read_json
from transfer.runs import RunDir
from transfer.subsets import class_covering_subset
from transfer.transforms import build_transform
from transfer.zoo import file_sha256, load_source


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


def run_identity(run: Path | str) -> dict:
    """What tells one finished run from another made later at the same path: the SHA-256 of its ``model.pt`` and of
    its training indices. An influence directory records it (``meta["run_identity"]``), and whatever scores the
    directory against the run later checks it (:func:`identity_mismatch`)."""
    rd = RunDir(run)
    indices = np.asarray(read_json(rd.subset, "run directory")["indices"], dtype=np.int64)
    return {"model_sha256": file_sha256(rd.model), "indices_sha256": hashlib.sha256(indices.tobytes()).hexdigest()}


def identity_mismatch(meta: dict, idx_train: np.ndarray, run: Path | str, now: dict | None = None) -> str | None:
    """Why an influence directory (its ``meta`` and ``idx_train``) was not computed from the run now at ``run``, or
    None when it was (``now``: the run's :func:`run_identity`, when the caller has it). A directory from before
    identities were recorded is matched by its run's settings and training indices."""
    rd = RunDir(run)
    now = now or run_identity(run)
    recorded = meta.get("run_identity")
    if recorded:
        if recorded.get("model_sha256") != now["model_sha256"]:
            return "the run's model.pt is another file now"
        if recorded.get("indices_sha256") != now["indices_sha256"]:
            return "the run's training images are others now"
        return None
    if meta.get("run_settings") != rd.recorded():
        return "the run's settings are others now"
    indices = np.asarray(read_json(rd.subset, "run directory")["indices"], dtype=np.int64)
    if not np.array_equal(np.asarray(idx_train, dtype=np.int64), indices):
        return "the run's training images are others now"
    return None


def up_to_date(path: Path | str, cfg: InfluenceConfig) -> bool:
    """Whether ``path`` is a complete influence directory computed with ``cfg``'s settings (:data:`SHARED`) from the
    run now at ``cfg.run``: what a killed study or ensemble keeps when it resumes."""
    try:
        result = InfluenceDir(path).read()
    except UserError:
        return False
    asked = dataclasses.asdict(cfg)
    config = result.meta.get("config", {})
    wanted = {k: asked[k] for k in SHARED} | {"run": cfg.run}
    # a directory from before --ensemble existed was one model's
    return (all(config.get(k, 1 if k == "ensemble" else None) == val for k, val in wanted.items())
            and identity_mismatch(result.meta, result["idx_train"], cfg.run) is None)  # fmt: skip


def run_dampings(settings: dict) -> dict[str, float]:
    """The value of every rule of :data:`study.attribution.settings.DAMPING_RULES` for a run (its recorded
    ``settings``)."""
    try:
        lr = float(settings["lr"])
        resolved = settings["resolved"]
        steps = int(resolved["epochs"]) * -(-int(resolved["n_train"]) // int(settings["batch_size"]))
    except (KeyError, TypeError, ValueError):
        raise UserError("the run's config.json lacks the learning rate, epochs, images or batch size of the 'source' "
                        "damping rule") from None  # fmt: skip
    return {"wd": run_weight_decay(settings), "source": 1.0 / (lr * steps)}

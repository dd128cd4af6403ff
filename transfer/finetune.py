"""Fine-tuning a source model on a target dataset, as in Utrera et al. (2020)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transfer import validation as v
from transfer.datasets import dataset_spec, load_raw_splits, split_sizes, stored_channels
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.freezing import ALL_BLOCKS, parse_blocks, residual_blocks
from transfer.models import HEAD_INITS, MAX_RESOLUTION, MIN_RESOLUTION, build_model, check_arch, replace_classifier
from transfer.precision import check_speed_settings, resolve_speed, speed_fields
from transfer.runs import RunDir, atomic_write_json
from transfer.runtime import Runtime, torch_threads
from transfer.subsets import MAX_SEED, class_covering_subset
from transfer.train import (
    FROZEN_BN,
    TrainConfig,
    finish_run,
    fit,
    open_run,
    paper_epochs,
    paper_eval_every,
    training_inputs,
)
from transfer.transforms import AUGMENTS
from transfer.zoo import LoadedSource, get_source, load_source, source_names

SPEED = speed_fields()


@dataclass
class FinetuneConfig(Runtime):
    """Every setting of a fine-tuning run; each but :data:`transfer.runtime.RESUMABLE` is saved in the run's
    ``config.json``."""

    source: str = field(metadata={"help": "zoo name (robust-transfer sources), run directory or checkpoint path"})
    target: str = field(metadata={"help": "target dataset (robust-transfer datasets)"})
    blocks: str = field(
        default="1", metadata={"help": "residual blocks to train besides the classifier: 0, 1, 3, 9 or all"}
    )
    subset: str = field(
        default="all", metadata={"help": "number of training images (class-covering random subset) or all"}
    )
    seed: int = field(
        default=20_000_000,
        metadata={"help": "seed of the subset, head init and batch order (paper: 20000000 + 100000*i)"},
    )
    epochs: str = field(
        default="auto", metadata={"help": "epochs, or auto: 100 up to 1,600 images, 150 above (paper's Table 2)"}
    )
    eval_every: str = field(
        default="auto",
        metadata={
            "help": "epochs between test evaluations (after epoch 1, 1+k, 1+2k, ... and the last), auto: the paper's Table 2, 20 in runs of up to 100 epochs, 10 in longer ones, or last: after the last epoch only"
        },
    )
    arch: str | None = field(
        default=None, metadata={"help": "architecture of a checkpoint path (resnet50 if the file does not say)"}
    )
    batch_size: int = field(default=128, metadata={"help": "batch size"})
    lr: float = field(
        default=0.1, metadata={"help": "initial learning rate, divided by 10 at 1/3 and 2/3 of the epochs"}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    augment: str = field(default="paper", metadata={"help": "paper (crop+flip+jitter+rotate) or none"})
    head_init: str = field(
        default="paper",
        metadata={"help": "paper: classifier weights N(0,1), bias 0 (the paper's code); default: PyTorch's init"},
    )
    frozen_bn: str = field(
        default="train",
        metadata={
            "help": "train: frozen BatchNorm layers still update running stats, as in the paper's code (model.train() on a partly frozen net); eval: frozen layers fully fixed, which lets their output be cached"
        },
    )
    resolution: int | None = field(
        default=None, metadata={"help": "input size images are resized to (default: the source's native size)"}
    )
    precision: str = SPEED["precision"]
    channels_last: str = SPEED["channels_last"]
    augment_on: str = SPEED["augment_on"]

    def __post_init__(self):
        """Every setting checked here, before any file is read or written (names the flag and the range)."""
        dataset_spec(self.target)
        parse_blocks(self.blocks)
        v.count_or_word("subset", self.subset, ("all",))
        v.count_or_word("epochs", self.epochs, ("auto",))
        v.count_or_word("eval_every", self.eval_every, ("auto", "last"))
        v.integer("seed", self.seed, low=0, high=MAX_SEED)
        if self.arch is not None:
            check_arch(self.arch)
        v.integer("batch_size", self.batch_size, low=1)
        v.number("lr", self.lr, low=0, low_open=True)
        v.number("momentum", self.momentum, low=0, high=1, high_open=True)
        v.number("weight_decay", self.weight_decay, low=0)
        v.choice("augment", self.augment, AUGMENTS)
        v.choice("head_init", self.head_init, HEAD_INITS)
        v.choice("frozen_bn", self.frozen_bn, FROZEN_BN)
        if self.resolution is not None:
            v.integer("resolution", self.resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION)
        check_speed_settings(self)
        super().__post_init__()


def _count(value: str | int, words: dict[str, int]) -> int:
    """A validated count field: one of ``words`` (``auto``, ``all``) resolved, or the integer it spells."""
    return words[value] if value in words else int(value)


def resolve_eval_every(value: str, epochs: int) -> int | None:
    """``--eval-every`` as :class:`TrainConfig` takes it: a count, the paper's for ``auto``, ``None`` for ``last``."""
    return None if value == "last" else _count(value, {"auto": paper_eval_every(epochs)})


def source_block_count(source: str, arch: str | None = None, cache_dir: str | None = None) -> int:
    """Residual blocks of ``source``, without downloading it.

    A zoo entry's architecture is built with random weights (the count depends on it alone); a
    checkpoint file or run directory is loaded, which also checks that it exists and is one.
    """
    if source in source_names():
        return len(residual_blocks(build_model(arch or get_source(source).arch, 10)))
    return len(residual_blocks(load_source(source, arch, cache_dir, download=False).model))


def training_split_size(target: str, data_root: str | None = None) -> int | None:
    """Training images of ``target``: known sizes without loading, else the local copy's; None when absent here."""
    known = split_sizes(target)
    if known:
        return known[0]
    try:
        return len(load_raw_splits(target, data_root, download=False)[0])
    except UserError:
        return None  # not on this machine: the run itself will fetch it (or fail with the loader's message)


def check_feasible(cfg: FinetuneConfig, n_blocks: int, n_available: int | None) -> None:
    """What ``finetune`` refuses once the source and the data are known, checkable before any run starts.

    ``n_blocks``: the source's residual blocks; ``n_available``: images in the target's training
    split (None: unknown here, the subset's upper bound is then checked by the run). A sweep calls
    this for every run of its grid before its ledger is created.
    """
    blocks = parse_blocks(cfg.blocks)
    if blocks != ALL_BLOCKS and blocks > n_blocks:
        raise UserError(
            f"--blocks {blocks} exceeds the {n_blocks} residual blocks of this model ({cfg.source}); "
            f"use at most {n_blocks} or 'all'"
        )
    if cfg.subset == "all":
        return
    n, classes = int(cfg.subset), dataset_spec(cfg.target).num_classes
    if n < classes:
        raise UserError(f"--subset {n}: a subset of {n} images cannot cover {classes} classes; use --subset >= {classes}")
    if n_available is not None and n > n_available:
        raise UserError(f"--subset {n} is larger than the split it is drawn from ({n_available} images)")


@dataclass
class PreparedRun:
    """A fine-tune's source, data and resolved settings, checked before anything is written: what
    :func:`finetune` and :func:`transfer.together.finetune_together` train from."""

    cfg: FinetuneConfig
    blocks: int | str
    device: torch.device
    src: LoadedSource  # the source model (its classifier replaced by open) and its facts
    train_raw: object
    test_raw: object
    indices: np.ndarray
    resolution: int
    train_cfg: TrainConfig
    augment_on: str
    settings: dict

    def open(self, run: RunDir, resume: bool) -> dict | None:
        """Start or check ``run`` (held locked by the caller); a finished run's summary, else ``None`` after the
        subset is recorded and the classifier replaced (seeded by the run's seed). A resumed run keeps the speed
        settings it started with (:func:`transfer.precision.keep_recorded_speed`; a warning says where they differ
        from this session's)."""
        summary, self.train_cfg, self.augment_on = open_run(run, self.settings, resume, self.train_cfg, self.augment_on,
                                                            self.device, self.src.sha256)  # fmt: skip
        if summary is not None:
            return summary
        if not run.subset.exists():
            labels = self.train_raw.targets[self.indices].tolist()
            atomic_write_json(run.subset, {"seed": self.cfg.seed, "indices": self.indices.tolist(), "labels": labels})
        spec = dataset_spec(self.cfg.target)
        replace_classifier(self.src.model, spec.num_classes, self.cfg.head_init,
                           torch.Generator().manual_seed(self.cfg.seed))  # fmt: skip
        return None

    def inputs(self):
        """The training and test splits as :func:`transfer.train.fit` takes them."""
        return training_inputs(self.train_raw, self.test_raw, self.indices, self.resolution, self.cfg.augment,
                               self.augment_on, self.device)  # fmt: skip

    def finish(self, run: RunDir, history: list[dict], wall: float, together: int = 1) -> dict:
        """Write the run's checkpoint and summary (``together``: the models its training loop trained, where
        more than one; :mod:`transfer.together`)."""
        meta = {
            "source": self.cfg.source,
            "target": self.cfg.target,
            "blocks": str(self.blocks),
            "n_train": len(self.indices),
            "seed": self.cfg.seed,
            "source_sha256": self.src.sha256,
            **self.train_cfg.speed(self.augment_on),
            **({"together": together} if together > 1 else {}),
        }
        return finish_run(run, self.src.model, self.src.arch, self.resolution, history, wall, meta)


def prepare_run(cfg: FinetuneConfig, indices: np.ndarray | None = None) -> PreparedRun:
    """Load the source and the target's splits, draw (or check) the training images and resolve every setting."""
    blocks = parse_blocks(cfg.blocks)
    device = resolve_device(cfg.device)
    src = load_source(cfg.source, cfg.arch, cfg.cache_dir)
    train_raw, test_raw = load_raw_splits(cfg.target, cfg.data_root)
    # the checks a sweep makes before it starts, here before any write
    check_feasible(cfg, len(residual_blocks(src.model)), len(train_raw))
    resolution = cfg.resolution or src.input_size
    given = indices is not None
    if given:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(train_raw):
            raise UserError(f"indices must be a non-empty list of training images in [0, {len(train_raw)})")
        n_train = len(indices)
    else:
        n_train = _count(cfg.subset, {"all": len(train_raw)})
        indices = (
            class_covering_subset(train_raw.targets, n_train, cfg.seed)
            if n_train != len(train_raw)
            else np.arange(len(train_raw))
        )
    epochs = _count(cfg.epochs, {"auto": paper_epochs(n_train)})
    speed = resolve_speed(cfg, device, resolution, stored_channels(train_raw))
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        eval_every=resolve_eval_every(cfg.eval_every, epochs),
        seed=cfg.seed,
        frozen_bn=cfg.frozen_bn,
        cache_train_prefix=cfg.augment == "none" and cfg.frozen_bn == "eval",
        workers=cfg.workers,
        save_every_s=cfg.save_every,
        precision=speed["precision"],
        channels_last=speed["channels_last"],
    )
    settings = {
        **cfg.recorded(),
        "resolved": {
            "epochs": epochs,
            "n_train": int(n_train),
            "resolution": resolution,
            "arch": src.arch,
            "eval_every": cfg.eval_every if train_cfg.eval_every is None else train_cfg.eval_every,
        },
    }
    if given:
        settings["resolved"]["indices_sha256"] = hashlib.sha256(indices.tobytes()).hexdigest()
    return PreparedRun(cfg, blocks, device, src, train_raw, test_raw, indices, resolution, train_cfg,
                       speed["augment_on"], settings)  # fmt: skip


def finetune(
    cfg: FinetuneConfig,
    out: Path | str,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    indices: np.ndarray | None = None,
) -> dict:
    """Fine-tune ``cfg.source`` on ``cfg.target`` into the run directory ``out``; return its summary.

    ``indices``: train on exactly these images of the training split instead of ``cfg.subset``'s
    class-covering draw (retraining on chosen subsets, as the linear datamodeling score does); their
    hash is recorded with the settings, so a resume with other indices is refused.

    The classifier is replaced for the target's classes, the last ``cfg.blocks`` residual blocks and
    the classifier train, everything else stays frozen. With ``resume`` a killed run continues from
    its last saved epoch, after its recorded settings were compared with ``cfg`` (a finished run
    returns its summary unchanged). The directory is locked for the call's whole duration.
    """
    prepared = prepare_run(cfg, indices)
    run = RunDir(out)
    with torch_threads(cfg.threads), run.lock():
        summary = prepared.open(run, resume)
        if summary is not None:
            return summary
        train_set, test_set = prepared.inputs()
        history, wall = fit(prepared.src.model, prepared.blocks, train_set, test_set, prepared.train_cfg, run,
                            prepared.device, progress, on_epoch_end)  # fmt: skip
        return prepared.finish(run, history, wall)

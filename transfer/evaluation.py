"""Clean and PGD-robust accuracy of a classifier on a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from transfer import validation as v
from transfer.attacks import CONSTRAINTS, PGDConfig, attack_field, attack_from, check_attack_settings, pgd_attack
from transfer.datasets import Subset, Transformed, dataset_spec, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.models import MAX_RESOLUTION, MIN_RESOLUTION, check_arch
from transfer.runtime import Runtime, torch_threads
from transfer.transforms import build_transform
from transfer.zoo import load_source


@dataclass
class EvaluateConfig(Runtime):
    """Settings of ``robust-transfer evaluate``."""

    model: str = field(metadata={"help": "source name, run directory or checkpoint path"})
    dataset: str = field(metadata={"help": "dataset to evaluate on"})
    split: str = field(default="test", metadata={"help": "test or train"})
    attack: str = field(default="none", metadata={"help": "none, l2 or linf (PGD)"})
    eps: float | None = attack_field("eps", None)
    attack_steps: int = attack_field("attack_steps", 20)
    step_scale: float = attack_field("step_scale", 2.5)
    random_start: bool = attack_field("random_start", False)
    random_start_radius: str = attack_field("random_start_radius", "sphere")
    keep_best: bool = attack_field("keep_best", False, "scored there")
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N images"})
    arch: str | None = field(default=None, metadata={"help": "architecture of a checkpoint path that does not say"})
    resolution: int | None = field(default=None, metadata={"help": "input size (default: the model's native size)"})
    batch_size: int = field(default=256, metadata={"help": "batch size"})

    RUNTIME = ("device", "workers", "threads", "data_root", "cache_dir")

    def __post_init__(self):
        dataset_spec(self.dataset)
        v.choice("split", self.split, ("test", "train"))
        v.choice("attack", self.attack, ("none", *CONSTRAINTS))
        if self.attack != "none" and self.eps is None:
            raise UserError("--attack needs --eps")
        check_attack_settings(self)
        if self.limit is not None:
            v.integer("limit", self.limit, low=1)
        if self.arch is not None:
            check_arch(self.arch)
        if self.resolution is not None:
            v.integer("resolution", self.resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION)
        v.integer("batch_size", self.batch_size, low=1)
        super().__post_init__()


def evaluate(cfg: EvaluateConfig, progress: bool = False) -> dict:
    """Clean (and PGD) accuracy of ``cfg.model`` on a split of ``cfg.dataset``, with the settings used."""
    device = resolve_device(cfg.device)
    src = load_source(cfg.model, cfg.arch, cfg.cache_dir)
    train, test = load_raw_splits(cfg.dataset, cfg.data_root)
    raw = test if cfg.split == "test" else train
    if cfg.limit is not None:
        raw = Subset(raw, range(min(cfg.limit, len(raw))))
    attack = attack_from(cfg, cfg.attack, cfg.eps) if cfg.attack != "none" else None
    data = Transformed(raw, build_transform(cfg.resolution or src.input_size, train=False))
    with torch_threads(cfg.threads):
        result = evaluate_model(src.model.to(device), data, device, attack, cfg.batch_size, cfg.workers, progress)
    keys = ("model", "dataset", "split", "attack", "eps", "attack_steps")
    return result | {k: getattr(cfg, k) for k in keys}


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

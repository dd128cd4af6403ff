"""Clean and PGD-robust accuracy of a classifier on a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from transfer import validation as v
from transfer.attacks import CONSTRAINTS, START_RADII, PGDConfig, pgd_attack
from transfer.datasets import Subset, Transformed, dataset_spec, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.models import MAX_RESOLUTION, MIN_RESOLUTION, check_arch
from transfer.transforms import build_transform
from transfer.zoo import load_source


@dataclass
class EvaluateConfig:
    """Settings of ``robust-transfer evaluate``."""

    model: str = field(metadata={"help": "source name, run directory or checkpoint path"})
    dataset: str = field(metadata={"help": "dataset to evaluate on"})
    split: str = field(default="test", metadata={"help": "test or train"})
    attack: str = field(default="none", metadata={"help": "none, l2 or linf (PGD)"})
    eps: float | None = field(default=None, metadata={"help": "attack radius in [0, 1] pixel units"})
    attack_steps: int = field(default=20, metadata={"help": "PGD steps"})
    step_scale: float = field(default=2.5, metadata={"help": "PGD step size = step_scale * eps / steps"})
    random_start: bool = field(default=False, metadata={"help": "start PGD from a random point of the ball"})
    random_start_radius: str = field(
        default="sphere",
        metadata={"help": "L2 random start: sphere (radius eps, as robustness) or ball (radius uniform in [0, eps])"},
    )
    keep_best: bool = field(default=False, metadata={"help": "score each image at its PGD iterate of highest loss"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N images"})
    arch: str | None = field(default=None, metadata={"help": "architecture of a checkpoint path that does not say"})
    resolution: int | None = field(default=None, metadata={"help": "input size (default: the model's native size)"})
    batch_size: int = field(default=256, metadata={"help": "batch size"})
    data_root: str | None = field(default=None, metadata={"help": "where torchvision datasets live"})
    cache_dir: str | None = field(default=None, metadata={"help": "where downloaded source models live"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})

    def __post_init__(self):
        dataset_spec(self.dataset)
        v.choice("split", self.split, ("test", "train"))
        v.choice("attack", self.attack, ("none", *CONSTRAINTS))
        if self.attack != "none" and self.eps is None:
            raise UserError("--attack needs --eps")
        if self.eps is not None:
            v.number("eps", self.eps, low=0)
        v.integer("attack_steps", self.attack_steps, low=1)
        v.number("step_scale", self.step_scale, low=0, low_open=True)
        v.choice("random_start_radius", self.random_start_radius, START_RADII)
        if self.limit is not None:
            v.integer("limit", self.limit, low=1)
        if self.arch is not None:
            check_arch(self.arch)
        if self.resolution is not None:
            v.integer("resolution", self.resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION)
        v.integer("batch_size", self.batch_size, low=1)
        v.device_name("device", self.device)


def evaluate(cfg: EvaluateConfig, progress: bool = False) -> dict:
    """Clean (and PGD) accuracy of ``cfg.model`` on a split of ``cfg.dataset``, with the settings used."""
    device = resolve_device(cfg.device)
    src = load_source(cfg.model, cfg.arch, cfg.cache_dir)
    train, test = load_raw_splits(cfg.dataset, cfg.data_root)
    raw = test if cfg.split == "test" else train
    if cfg.limit is not None:
        raw = Subset(raw, range(min(cfg.limit, len(raw))))
    attack = None
    if cfg.attack != "none":
        attack = PGDConfig(
            cfg.attack,
            cfg.eps,
            cfg.attack_steps,
            cfg.step_scale,
            cfg.random_start,
            cfg.keep_best,
            cfg.random_start_radius,
        )
    data = Transformed(raw, build_transform(cfg.resolution or src.input_size, train=False))
    result = evaluate_model(src.model.to(device), data, device, attack, cfg.batch_size, progress=progress)
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

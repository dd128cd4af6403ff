"""Training a source model from scratch, naturally or with PGD adversarial training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transfer import validation as v
from transfer.attacks import PGDConfig, attack_field, attack_from, check_attack_settings
from transfer.datasets import dataset_spec, load_raw_splits, stored_channels
from transfer.device import resolve_device
from transfer.freezing import ALL_BLOCKS
from transfer.models import MAX_RESOLUTION, MIN_RESOLUTION, build_model, check_arch, native_size
from transfer.precision import check_speed_settings, resolve_speed, speed_fields
from transfer.runs import RunDir
from transfer.runtime import Runtime, torch_threads
from transfer.subsets import MAX_SEED
from transfer.train import TrainConfig, finish_run, fit, open_run, training_inputs
from transfer.transforms import AUGMENTS

SPEED = speed_fields()

CONSTRAINTS = ("none", "l2", "linf")


@dataclass
class PretrainConfig(Runtime):
    """Every setting of a source-training run."""

    dataset: str = field(default="mnist5k", metadata={"help": "training dataset"})
    arch: str = field(default="small_resnet", metadata={"help": "architecture"})
    constraint: str = field(default="none", metadata={"help": "adversarial training threat model: none, l2 or linf"})
    eps: float = attack_field("eps", 1.0)
    attack_steps: int = attack_field("attack_steps", 7, "per training batch")
    step_scale: float = attack_field("step_scale", 2.5)
    random_start: bool = attack_field(
        "random_start", True, "robustness's default is off; on here as in Madry et al.'s PGD training, so the attack "
        "does not start where the gradient may be masked"
    )
    random_start_radius: str = attack_field("random_start_radius", "sphere")
    keep_best: bool = attack_field(
        "keep_best", False, "robustness's default is on; off here: it costs one more forward pass per batch"
    )
    epochs: int = field(default=15, metadata={"help": "epochs"})
    batch_size: int = field(default=128, metadata={"help": "batch size"})
    lr: float = field(
        default=0.1, metadata={"help": "initial learning rate, divided by 10 at 1/3 and 2/3 of the epochs"}
    )
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    augment: str = field(default="paper", metadata={"help": "paper or none"})
    resolution: int | None = field(
        default=None, metadata={"help": "input size (default: the architecture's native size)"}
    )
    eval_every: int = field(default=5, metadata={"help": "epochs between test evaluations"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batch order"})
    precision: str = SPEED["precision"]
    channels_last: str = SPEED["channels_last"]
    augment_on: str = SPEED["augment_on"]

    RUNTIME = ("device", "workers", "threads", "data_root", "save_every")

    def __post_init__(self):
        """Every setting checked here, before any file is read or written (names the flag and the range)."""
        dataset_spec(self.dataset)
        check_arch(self.arch)
        v.choice("constraint", self.constraint, CONSTRAINTS)
        v.number("eps", self.eps, low=0, low_open=self.constraint != "none")
        check_attack_settings(self)
        v.integer("epochs", self.epochs, low=1)
        v.integer("batch_size", self.batch_size, low=1)
        v.number("lr", self.lr, low=0, low_open=True)
        v.number("weight_decay", self.weight_decay, low=0)
        v.choice("augment", self.augment, AUGMENTS)
        if self.resolution is not None:
            v.integer("resolution", self.resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION)
        v.integer("eval_every", self.eval_every, low=1)
        v.integer("seed", self.seed, low=0, high=MAX_SEED)
        check_speed_settings(self)
        super().__post_init__()

    def attack(self) -> PGDConfig | None:
        if self.constraint == "none":
            return None
        return attack_from(self, self.constraint, self.eps)


def pretrain(
    cfg: PretrainConfig,
    out: Path | str,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict:
    """Train ``cfg.arch`` on ``cfg.dataset`` from scratch (adversarially when ``cfg.constraint`` is set).

    The run directory ``out`` follows the rules of :class:`~transfer.runs.RunDir` and is locked
    for the call's whole duration.
    """
    spec = dataset_spec(cfg.dataset)
    device = resolve_device(cfg.device)
    attack = cfg.attack()
    resolution = cfg.resolution or native_size(cfg.arch)
    train_raw, test_raw = load_raw_splits(cfg.dataset, cfg.data_root)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, spec.num_classes)
    speed = resolve_speed(cfg, device, resolution, stored_channels(train_raw))
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        eval_every=cfg.eval_every,
        seed=cfg.seed,
        attack=attack,
        workers=cfg.workers,
        save_every_s=cfg.save_every,
        precision=speed["precision"],
        channels_last=speed["channels_last"],
    )
    augment_on = speed["augment_on"]
    run = RunDir(out)
    with torch_threads(cfg.threads), run.lock():
        summary, train_cfg, augment_on = open_run(run, cfg.recorded(), resume, train_cfg, augment_on, device)
        if summary is not None:
            return summary
        train_set, test_set = training_inputs(train_raw, test_raw, None, resolution, cfg.augment, augment_on, device)
        meta = {
            "dataset": cfg.dataset,
            "constraint": cfg.constraint,
            "eps": cfg.eps if attack else 0.0,
            "attack_steps": cfg.attack_steps,
            **train_cfg.speed(augment_on),
        }
        history, wall = fit(model, ALL_BLOCKS, train_set, test_set, train_cfg, run, device, progress, on_epoch_end)
        return finish_run(run, model, cfg.arch, resolution, history, wall, meta)

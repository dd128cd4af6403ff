"""The one training loop, shared by fine-tuning and (adversarial) source training.

SGD with momentum and weight decay over the trainable parameters; the learning rate is divided
by 10 at 1/3 and 2/3 of the epochs. Frozen layers run under ``torch.no_grad``; when their output
cannot change between epochs (``cache_train_prefix``: no augmentation and frozen BatchNorm in
eval mode) it is computed once and reused.

Every epoch draws its shuffling and augmentation from a generator seeded by ``(seed, epoch)``, and
the training state is saved atomically after every evaluation and at least every
``save_every_s`` seconds, so a killed run loses at most that much work, and resumed from
``state.pt`` ends exactly as an uninterrupted one would.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from transfer.attacks import PGDConfig, pgd_attack
from transfer.augment import BatchTransform, stack_images
from transfer.checkpoints import save_checkpoint
from transfer.datasets import Subset, Transformed
from transfer.errors import UserError
from transfer.files import atomic_torch_save, atomic_write_json, atomic_write_jsonl
from transfer.freezing import Split, split_frozen_prefix, unfreeze_last_blocks
from transfer.models import NormalizedModel
from transfer.precision import RESOLVED_PRECISIONS, autocast, keep_recorded_speed, tf32_allowed
from transfer.runs import RunDir
from transfer.transforms import build_transform

FROZEN_BN = ("train", "eval")


@dataclass
class TrainConfig:
    """Optimisation settings of one run."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_every: int | None = 10  # None: after the last epoch only
    seed: int = 0
    frozen_bn: str = "train"  # "train": frozen BatchNorm still updates running stats (paper's code)
    cache_train_prefix: bool = False
    attack: PGDConfig | None = None  # adversarial training when set
    workers: int = 0
    save_every_s: float = 60.0  # training state is saved after an epoch once this long has passed, and at evaluations
    precision: str = "fp32"  # resolved (transfer.precision): fp32, tf32 or bf16
    channels_last: bool = False

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.lr <= 0:
            raise UserError("--batch-size must be >= 1 and --lr > 0")
        if self.frozen_bn not in FROZEN_BN:
            raise UserError(f"--frozen-bn must be one of {FROZEN_BN}, got {self.frozen_bn!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise UserError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.precision not in RESOLVED_PRECISIONS:
            raise UserError(f"TrainConfig.precision must be resolved to {', '.join(RESOLVED_PRECISIONS)}, got "
                            f"{self.precision!r}")  # fmt: skip

    def speed(self, augment_on: str) -> dict:
        """What a run's summary records of how it ran (resolved from ``auto`` at its start; a resumed run keeps
        them, :func:`transfer.precision.keep_recorded_speed`)."""
        return {"precision": self.precision, "channels_last": self.channels_last, "augment_on": augment_on}


def open_run(run: RunDir, settings: dict, resume: bool, cfg: TrainConfig, augment_on: str, device: torch.device,
             source_sha256: str | None = None) -> tuple[dict | None, TrainConfig, str]:  # fmt: skip
    """Start or check ``run`` (held locked by the caller; :meth:`RunDir.open`), recording the speed settings ``cfg``
    and ``augment_on`` resolved to. Returns a finished run's summary (else ``None``), and the speed settings to train
    with: a resumed run keeps those it recorded at its start (:func:`transfer.precision.keep_recorded_speed`; a
    warning names what differs from this session's)."""
    run.open(settings, resume, source_sha256, cfg.speed(augment_on))
    if run.finished():  # only reached with resume, after the settings were compared
        return run.read_summary(), cfg, augment_on
    if not resume:
        return None, cfg, augment_on
    try:
        speed, message = keep_recorded_speed(cfg.speed(augment_on), run.recorded_speed(), device)
    except UserError as e:
        raise UserError(f"cannot resume {run.root}: {e}") from None
    if message:
        warnings.warn(f"{run.root}: {message}", stacklevel=3)
    return None, replace(cfg, precision=speed["precision"], channels_last=speed["channels_last"]), speed["augment_on"]


def training_inputs(train_raw, test_raw, indices, resolution: int, augment: str, augment_on: str, device):
    """The training and test splits as ``fit`` takes them: datasets transformed one image at a time by a data
    loader (``augment_on="loader"``), or :class:`DeviceImages` held on ``device`` (``"device"``)."""
    if augment_on == "device":
        x, y = stack_images(train_raw, indices, device)
        xt, yt = stack_images(test_raw, None, device)
        return (DeviceImages(x, y, BatchTransform(resolution, train=True, augment=augment)),
                DeviceImages(xt, yt, BatchTransform(resolution, train=False)))  # fmt: skip
    train = train_raw if indices is None else Subset(train_raw, indices)
    return (Transformed(train, build_transform(resolution, train=True, augment=augment)),
            Transformed(test_raw, build_transform(resolution, train=False)))  # fmt: skip


@dataclass
class DeviceImages:
    """A split held as uint8 images on the training device with the batch transform that feeds the model
    (:mod:`transfer.augment`): what ``fit`` takes instead of a dataset when augmentation runs on the device."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # (N,)
    transform: nn.Module

    def __len__(self) -> int:
        return len(self.labels)


def ordered(data, order: torch.Tensor, batch_size: int, workers: int):
    """``(x, y)`` batches of ``data`` (a dataset or :class:`DeviceImages`) in ``order``."""
    if isinstance(data, DeviceImages):
        return ((data.transform(data.images[idx]), data.labels[idx])
                for idx in index_batches(order.to(data.images.device), batch_size))  # fmt: skip
    return DataLoader(torch.utils.data.Subset(data, order.tolist()), batch_size=batch_size, num_workers=workers)


def paper_epochs(n_train: int) -> int:
    """Epochs of the paper's Table 2: 100 up to 1,600 training images, 150 above."""
    return 100 if n_train <= 1600 else 150


def paper_eval_every(epochs: int) -> int:
    """The paper's Table 2 "test accuracy frequency": every 20 epochs in 100-epoch runs, every 10 in longer ones."""
    return 20 if epochs <= 100 else 10


def lr_milestones(epochs: int) -> list[int]:
    """Epochs after which the learning rate is divided by 10: 1/3 and 2/3 of the run."""
    return sorted({m for m in (epochs // 3, 2 * epochs // 3) if 0 < m < epochs})


def sgd_and_schedule(params, cfg: TrainConfig):
    """The fine-tune's optimiser over ``params`` and its schedule: SGD with ``cfg``'s momentum and weight decay, the
    learning rate divided by 10 at :func:`lr_milestones`."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, lr_milestones(cfg.epochs), gamma=0.1)


def place_model(model: nn.Module, blocks, cfg: TrainConfig, device) -> None:
    """``model`` on ``device`` (channels-last where ``cfg`` says), its last ``blocks`` and classifier trainable."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    unfreeze_last_blocks(model, blocks)


def eval_epochs(epochs: int, every: int | None) -> set[int]:
    """Epochs (1-based) after which test accuracy is measured: 1, 1 + every, 1 + 2 every, ..., and the last.

    As the paper's appendix B states ("after epoch 1, 21, 41, ..., 81, and 100" for a frequency of
    20): the `robustness` library logs at 0-based epochs divisible by the frequency and at the last.
    ``every=None``: the last alone (retrainings, whose accuracy along the way nobody reads).
    """
    return {epochs} if every is None else {epochs, *range(1, epochs + 1, every)}


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training can change: trainable parameters and all buffers (BatchNorm statistics).

    Frozen parameters are rebuilt from the source on resume, so a ResNet-50 head run saves
    kilobytes per epoch instead of the whole network.
    """
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in trainable | buffers}


def restore_state(run: RunDir, model: nn.Module, opt, sched, device) -> tuple[list[dict], int, float]:
    """Load ``state.pt`` into model, optimiser and schedule; return (history, first epoch to run, elapsed s).

    A damaged file (truncated by a full disk, or from another model) is a :class:`UserError`.
    """
    try:
        state = torch.load(run.state, map_location=device, weights_only=True)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) & set(mutable_state(model)):
            raise UserError(f"{run.state} does not match this model; delete it to start the run again")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return list(state["history"]), int(state["epoch"]) + 1, float(state["elapsed"])
    except UserError:
        raise
    except Exception as exc:  # EOFError, RuntimeError, UnpicklingError, KeyError, ...: all mean a damaged file
        raise UserError(
            f"{run.state} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "delete it to restart the run from its beginning"
        ) from None


def set_modes(model: nn.Module, split: Split, frozen_bn: str) -> None:
    model.train()
    if frozen_bn == "eval":
        split.prefix.eval()


@torch.no_grad()
def _prefix_features(prefix: nn.Module, dataset, device, cfg: TrainConfig, desc: str, progress: bool):
    prefix.eval()
    feats, labels = [], []
    batches = ordered(dataset, torch.arange(len(dataset)), 256, cfg.workers)
    for x, y in tqdm(batches, desc=desc, leave=False, disable=not progress):
        with autocast(cfg.precision, device):
            feats.append(prefix(to_layout(x.to(device), cfg)).float())
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def to_layout(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last and x.dim() == 4 else x


def index_batches(perm: torch.Tensor, batch_size: int):
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


@torch.no_grad()
def _test_accuracy(model, split, test_set, test_cache, cfg, device) -> float:
    model.eval()
    correct = 0
    if test_cache is not None:
        feats, labels = test_cache
        for idx in index_batches(torch.arange(len(labels)), 512):
            with autocast(cfg.precision, device):
                correct += (split.suffix(feats[idx]).argmax(1) == labels[idx]).sum().item()
        return correct / len(labels)
    for x, y in ordered(test_set, torch.arange(len(test_set)), 256, cfg.workers):
        with autocast(cfg.precision, device):
            correct += (model(to_layout(x.to(device), cfg)).argmax(1) == y.to(device)).sum().item()
    return correct / len(test_set)


def fit(
    model: NormalizedModel,
    blocks: int | str,
    train_set: Dataset | DeviceImages,
    test_set: Dataset | DeviceImages,
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> tuple[list[dict], float]:
    """Train the last ``blocks`` blocks and the classifier; return (evaluation rows, wall seconds).

    Resumes from ``run.state`` when it exists. Each row of the history is
    ``{"epoch", "train_loss", "train_acc", "test_acc", "lr"}``; it is also written to
    ``metrics.jsonl`` after every evaluation. The splits are datasets (a data loader transforms each
    image) or :class:`DeviceImages` (batches transformed on the device); ``cfg.precision`` and
    ``cfg.channels_last`` hold for the call (:mod:`transfer.precision`).
    """
    with tf32_allowed(cfg.precision == "tf32"):
        return _fit(model, blocks, train_set, test_set, cfg, run, device, progress, on_epoch_end)


def _fit(model, blocks, train_set, test_set, cfg: TrainConfig, run: RunDir, device, progress, on_epoch_end):
    place_model(model, blocks, cfg, device)
    split = split_frozen_prefix(model, blocks)
    opt, sched = sgd_and_schedule([p for p in model.parameters() if p.requires_grad], cfg)
    history: list[dict] = []
    start, elapsed = 1, 0.0
    if run.state.exists():
        history, start, elapsed = restore_state(run, model, opt, sched, device)

    t0 = time.perf_counter()
    has_prefix = len(split.prefix) > 0
    train_cache = test_cache = None
    if has_prefix and cfg.cache_train_prefix and cfg.attack is None and start <= cfg.epochs:
        train_cache = _prefix_features(split.prefix, train_set, device, cfg, "cache train prefix", progress)
    if has_prefix and cfg.frozen_bn == "eval" and start <= cfg.epochs:
        test_cache = _prefix_features(split.prefix, test_set, device, cfg, "cache test prefix", progress)
    n = len(train_set)
    evals = eval_epochs(cfg.epochs, cfg.eval_every)
    cuda = [device] if device.type == "cuda" else []
    last_save = time.perf_counter()
    bar = tqdm(range(start, cfg.epochs + 1), desc="epochs", disable=not progress, initial=start - 1, total=cfg.epochs)
    for epoch in bar:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            perm = torch.randperm(n)
            if train_cache is not None:
                feats, labels = train_cache
                batches = ((None, labels[idx], feats[idx]) for idx in index_batches(perm.to(device), cfg.batch_size))
            else:
                batches = ((x, y, None) for x, y in ordered(train_set, perm, cfg.batch_size, cfg.workers))
            loss_sum = correct = 0.0
            for x, y, h in batches:
                y = y.to(device)
                if h is None:
                    x = to_layout(x.to(device), cfg)
                    if cfg.attack is not None:
                        model.eval()
                        x = pgd_attack(model, x, y, cfg.attack)  # the attack in float32, whatever the precision
                    set_modes(model, split, cfg.frozen_bn)
                    with torch.no_grad(), autocast(cfg.precision, device):
                        h = split.prefix(x)
                else:
                    set_modes(model, split, cfg.frozen_bn)
                with autocast(cfg.precision, device):
                    logits = split.suffix(h)
                loss = F.cross_entropy(logits.float(), y)
                if not torch.isfinite(loss):
                    raise UserError(
                        f"training diverged: the loss became {loss.item()} in epoch {epoch} (learning rate "
                        f"{opt.param_groups[0]['lr']:g}); lower --lr. The last saved state is kept in {run.root}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if epoch in evals:
            acc = _test_accuracy(model, split, test_set, test_cache, cfg, device)
            history.append(
                {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n, "test_acc": acc, "lr": lr}
            )
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", test_acc=f"{acc:.3f}")
            atomic_write_jsonl(run.metrics, history)
        if epoch in evals or time.perf_counter() - last_save >= cfg.save_every_s:
            last_save = time.perf_counter()
            state = {
                "model": mutable_state(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "history": history,
                "elapsed": elapsed + last_save - t0,
            }
            atomic_torch_save(state, run.state, durable=False)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return history, elapsed + time.perf_counter() - t0


def finish_run(
    run: RunDir, model: NormalizedModel, arch: str, input_size: int, history: list[dict], wall: float, meta: dict
) -> dict:
    """Write ``model.pt`` and then ``summary.json`` (the run's mark of completion); drop ``state.pt``.

    The checkpoint holds CPU copies of the tensors; ``model`` stays on its device.
    """
    save_checkpoint(run.model, model, arch, input_size, meta)
    best = max(history, key=lambda r: r["test_acc"])
    summary = {
        "final_test_acc": history[-1]["test_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "epochs": history[-1]["epoch"],
        "wall_time_s": wall,
        **meta,
    }
    atomic_write_json(run.summary, summary)
    run.state.unlink(missing_ok=True)
    return summary

"""What a sweep will cost before it runs: runs per target and size, image passes, and time at a measured speed.

Compute is counted in image passes: ``n_train x epochs`` training passes (forward and backward
through the trainable part) and ``n_test x evaluations`` test passes (forward only) per run. Time
is those passes divided by images/s measured here, on this machine's device, with the source's
architecture at its input size and the run's trainable blocks (random weights: speed does not
depend on them), or by a figure the user gives.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from study.sweeps.grid import Grid
from transfer.datasets import dataset_spec, load_raw_splits, split_sizes
from transfer.device import resolve_device
from transfer.finetune import FinetuneConfig, resolve_eval_every
from transfer.freezing import parse_blocks, split_frozen_prefix, unfreeze_last_blocks
from transfer.models import build_model, native_size
from transfer.precision import autocast, resolve_channels_last, resolve_precision, tf32_allowed
from transfer.train import eval_epochs, paper_epochs
from transfer.zoo import get_source, load_source, source_names


@dataclass
class Plan:
    """The expansion of a grid and its estimated cost."""

    runs: int
    per_target_size: Counter = field(default_factory=Counter)  # (target, size) -> runs
    train_passes: int = 0
    test_passes: int = 0
    seconds: float = 0.0
    speeds: dict = field(default_factory=dict)  # (arch, resolution, blocks) -> (train img/s, test img/s)
    device: str = ""
    measured: bool = True  # False: the speed was given, not measured


def _arch_and_size(source: str, cfg: FinetuneConfig) -> tuple[str, int]:
    if source in source_names():
        arch = get_source(source).arch
        return arch, cfg.resolution or native_size(arch)
    loaded = load_source(source, cfg.arch)
    return loaded.arch, cfg.resolution or loaded.input_size


def _sizes(target: str, data_root: str | None) -> tuple[int, int]:
    known = split_sizes(target)
    if known:
        return known
    train, test = load_raw_splits(target, data_root)
    return len(train), len(test)


def measure_speed(arch: str, resolution: int, blocks: str, device: torch.device, batch: int = 32,
                  steps: int = 3, precision: str = "fp32", channels_last: bool = False) -> tuple[float, float]:  # fmt: skip
    """(training, test) images/s of ``arch`` at ``resolution`` with ``blocks`` trainable, on ``device``, in the
    runs' resolved ``precision`` and memory layout (:mod:`transfer.precision`)."""
    with tf32_allowed(precision == "tf32"):
        return _measure(arch, resolution, blocks, device, batch, steps, precision, channels_last)


def _measure(arch, resolution, blocks, device, batch, steps, precision, channels_last) -> tuple[float, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, 10).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    blocks_ = parse_blocks(blocks)
    unfreeze_last_blocks(model, blocks_)
    split = split_frozen_prefix(model, blocks_)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, resolution, resolution, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=device)

    def train_step():
        model.train()
        with torch.no_grad(), autocast(precision, device):
            h = split.prefix(x)
        with autocast(precision, device):
            logits = split.suffix(h)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def test_step():
        model.eval()
        with torch.no_grad(), autocast(precision, device):
            model(x)

    speeds = []
    for step in (train_step, test_step):
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        speeds.append(batch * steps / (time.perf_counter() - t))
    return speeds[0], speeds[1]


def _device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def plan_grid(grid: Grid, images_per_second: float | None = None, device: str = "auto") -> Plan:
    """Count ``grid``'s runs and estimate their cost (no run list is built); with ``images_per_second`` no
    speed is measured."""
    dev = resolve_device(device)
    plan = Plan(runs=grid.count, device=_device_label(dev), measured=images_per_second is None)
    shapes: dict[str, tuple[str, int]] = {}
    # every seed of a (target, size, blocks, source) costs the same: one estimate per combination
    for spec, n_seeds in grid.combinations():
        cfg = spec.config()
        dataset_spec(cfg.target)
        n_train_all, n_test = _sizes(cfg.target, cfg.data_root)
        n_train = n_train_all if cfg.subset == "all" else int(cfg.subset)
        epochs = paper_epochs(n_train) if cfg.epochs == "auto" else int(cfg.epochs)
        every = resolve_eval_every(cfg.eval_every, epochs)
        train, test = n_seeds * n_train * epochs, n_seeds * n_test * len(eval_epochs(epochs, every))
        plan.per_target_size[(cfg.target, cfg.subset)] += n_seeds
        plan.train_passes += train
        plan.test_passes += test
        if cfg.source not in shapes:
            shapes[cfg.source] = _arch_and_size(cfg.source, cfg)
        arch, resolution = shapes[cfg.source]
        precision, layout = resolve_precision(cfg.precision, dev), resolve_channels_last(cfg.channels_last, dev)
        speed_key = (arch, resolution, cfg.blocks, precision)
        if speed_key not in plan.speeds:
            plan.speeds[speed_key] = (
                (images_per_second, images_per_second)
                if images_per_second
                else measure_speed(arch, resolution, cfg.blocks, dev, precision=precision, channels_last=layout)
            )
        train_speed, test_speed = plan.speeds[speed_key]
        plan.seconds += train / train_speed + test / test_speed
    return plan


def format_plan(grid: Grid, plan: Plan, slots: int = 1) -> str:
    """The plan as text: runs per target and size, totals, speeds used and the time estimate."""
    sizes = list(grid.seeds)
    width = max(8, *(len(t) for t in grid.targets))
    lines = [f"grid {grid.name!r}: {plan.runs:,} runs = {len(grid.sources)} sources x {len(grid.blocks)} block settings "
             f"x {len(grid.targets)} targets x {sum(grid.seeds.values())} (size, seed) pairs", "",
             f"{'target':<{width}} " + " ".join(f"{s:>7}" for s in sizes) + f" {'total':>7}"]  # fmt: skip
    for t in grid.targets:
        counts = [plan.per_target_size[(t, s)] for s in sizes]
        lines.append(f"{t:<{width}} " + " ".join(f"{c:>7,}" for c in counts) + f" {sum(counts):>7,}")
    lines += [
        "",
        f"image passes: {plan.train_passes:,} training (forward + backward), {plan.test_passes:,} test (forward)",
    ]
    if plan.measured:
        for (arch, res, blocks, precision), (tr, te) in plan.speeds.items():
            lines.append(f"measured on {plan.device}: {arch} at {res} px, blocks {blocks}, {precision}: {tr:,.0f} img/s "
                         f"training, {te:,.0f} img/s test")  # fmt: skip
    else:
        speed = next(iter(plan.speeds.values()))[0]
        lines.append(f"speed given by --images-per-second: {speed:,.0f} img/s for every source and block setting")
    hours = plan.seconds / 3600
    lines.append(f"estimated compute: {hours:,.1f} device-hours; {hours / max(slots, 1):,.1f} hours on {slots} slot(s)")
    return "\n".join(lines)

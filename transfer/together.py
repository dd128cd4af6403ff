"""Several fine-tunes of one source trained in one loop: per step one forward of the frozen prefix and one forward
and backward of the trainable blocks for all of them, by ``torch.func.vmap`` over the models' stacked weights and
BatchNorm statistics (the frozen weights are shared, not stacked).

What may differ between the models is what differs between the retrainings of the linear datamodeling score or an
ensemble: the training images (their count is shared) and the seed (head initialisation, batch order,
augmentation). Each model draws its batch order and augmentation from its own generator states, switched in around
its draws, so it sees exactly the batches it would see alone; SGD with momentum and weight decay acts entry by entry,
so one optimiser over the stacked weights is every model's own, and each model's frozen BatchNorm layers keep their
own running statistics. The results are one-at-a-time training's up to floating-point round-off (the vmapped
convolutions of the trainable blocks are grouped ones): ``tests/transfer/test_together.py``.

Where it pays: where one small model's step is bound by per-kernel overheads (a GPU). On a CPU one small
model's convolutions already run at about three quarters of the core's rate for a large matrix product (most of the
rest of its step is BatchNorm's passes over memory), and the stacked ones were measured slower
(``benchmarks/attribution_ground_truth.py``), which is why the commands train one model at a time unless asked.

Every model keeps its own run directory, saved in the format :func:`transfer.train.fit` writes, so a killed loop's
runs resume here or alone.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from transfer.errors import UserError
from transfer.files import atomic_torch_save, atomic_write_jsonl
from transfer.finetune import FinetuneConfig, PreparedRun, prepare_run
from transfer.freezing import split_frozen_prefix
from transfer.precision import autocast, tf32_allowed
from transfer.runs import RunDir
from transfer.runtime import torch_threads
from transfer.train import (
    DeviceImages,
    TrainConfig,
    epoch_seed,
    eval_epochs,
    fit,
    index_batches,
    mutable_state,
    place_model,
    restore_state,
    set_modes,
    sgd_and_schedule,
    to_layout,
)


def _stack(dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([d[k].detach() for d in dicts]) for k in dicts[0]}


def _rng_state(cuda: list) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng_state(state: tuple, cuda: list) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda, state[1], strict=True):
        torch.cuda.set_rng_state(s, d)


class _Stacked:
    """M models of one architecture as stacked tensors: the trainable weights (leaves of one optimiser, in the
    models' parameter order), every BatchNorm statistic, and the frozen weights once."""

    def __init__(self, models, blocks):
        self.models = models
        self.splits = [split_frozen_prefix(m, blocks) for m in models]
        self.template = self.splits[0]
        self.frozen = {k: v.detach() for k, v in self.template.prefix.named_parameters()}
        for s in self.splits[1:]:
            if any(not torch.equal(self.frozen[k], v) for k, v in s.prefix.named_parameters()):
                raise UserError("models trained together must share their frozen weights (one source)")
        self.prefix_buffers = _stack([dict(s.prefix.named_buffers()) for s in self.splits])
        self.buffers = _stack([dict(s.suffix.named_buffers()) for s in self.splits])
        by_id = {id(p): n for n, p in self.template.suffix.named_parameters()}
        self.order = [by_id[id(p)] for p in models[0].parameters() if p.requires_grad]
        self.params = {n: t.requires_grad_() for n, t in _stack([dict(s.suffix.named_parameters())
                                                                  for s in self.splits]).items()}  # fmt: skip
        self.has_prefix = len(self.template.prefix) > 0

    def logits(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        """``(M, B, classes)`` for inputs ``(M, B, ...)`` (``batched``) or ``(B, ...)`` shared by all models."""
        h = x
        if self.has_prefix:
            with torch.no_grad():
                h = vmap(lambda b, x: functional_call(self.template.prefix, (self.frozen, b), (x,)),
                         in_dims=(0, 0 if batched else None))(self.prefix_buffers, x)  # fmt: skip
        elif not batched:
            h = x.expand(len(self.models), *x.shape)
        with warnings.catch_warnings():
            # torch's vmap has no batching rule for the as_strided_ of adaptive average pooling (the head's pool) and
            # loops over the models there, saying so once per process; the pool is a sliver of the step
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return vmap(lambda p, b, h: functional_call(self.template.suffix, (p, b), (h,)))(self.params, self.buffers,
                                                                                              h)  # fmt: skip

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy every model's slice into its own modules (before its state is saved or its checkpoint written)."""
        for m, s in enumerate(self.splits):
            for k, b in s.prefix.named_buffers():
                b.copy_(self.prefix_buffers[k][m])
            for k, p in s.suffix.named_parameters():
                p.copy_(self.params[k][m])
            for k, b in s.suffix.named_buffers():
                b.copy_(self.buffers[k][m])


def fit_together(models, blocks, train_sets: Sequence[DeviceImages], test_set: DeviceImages, cfg: TrainConfig,
                 seeds: Sequence[int], runs: Sequence[RunDir], device: torch.device, progress: bool = True,
                 on_epoch_end: Callable[[int], None] | None = None) -> list[tuple[list[dict], float]]:  # fmt: skip
    """Train ``models[m]`` on ``train_sets[m]`` with seed ``seeds[m]`` into ``runs[m]``, all in one loop; every
    other setting is ``cfg``'s. Return each model's ``(history, wall seconds)`` as :func:`transfer.train.fit` does
    (the wall time is the loop's divided by the number of models: each one's share).

    The runs resume from their ``state.pt`` when all of them saved the same epoch (else :class:`ValueError`: train
    them one at a time). Needs the splits on the device (``--augment-on device``), equal training-set sizes, no
    attack and no cached prefix.
    """
    if not all(isinstance(d, DeviceImages) for d in [*train_sets, test_set]):
        raise ValueError("fit_together needs the splits held on the device (augment_on='device')")
    if len({len(d) for d in train_sets}) != 1 or not (len(models) == len(train_sets) == len(seeds) == len(runs)):
        raise ValueError("fit_together needs one training set, seed and run per model, all sets of one size")
    if cfg.attack is not None or cfg.cache_train_prefix:
        raise ValueError("fit_together trains without an attack and without a cached prefix")
    with tf32_allowed(cfg.precision == "tf32"):
        return _fit_together(models, blocks, train_sets, test_set, cfg, seeds, runs, device, progress, on_epoch_end)


def _restored(models, runs, cfg: TrainConfig, device) -> tuple[list[list[dict]], int, float, list[dict] | None, dict]:
    """Every run's saved state loaded into its model: (histories, first epoch, elapsed, optimiser states or None,
    the schedule's state)."""
    if not any(r.state.exists() for r in runs):
        return [[] for _ in runs], 1, 0.0, None, {}
    histories, starts, elapsed, opt_states = [], set(), 0.0, []
    for model, run in zip(models, runs, strict=True):
        opt, sched = sgd_and_schedule([p for p in model.parameters() if p.requires_grad], cfg)
        if not run.state.exists():
            raise ValueError(f"{run.root} has no saved state while others of its loop have")
        history, start, spent = restore_state(run, model, opt, sched, device)
        histories.append(history)
        starts.add(start)
        elapsed = max(elapsed, spent)
        opt_states.append(opt.state_dict())
    if len(starts) != 1:
        raise ValueError(f"runs trained together must resume from one epoch; they saved {sorted(starts)}")
    return histories, starts.pop(), elapsed, opt_states, sched.state_dict()


def _stacked_opt_state(states: list[dict]) -> dict:
    """The models' SGD states (their momentum buffers) as the state of the one optimiser over the stacked weights."""

    def stack(values):
        return torch.stack(values) if all(isinstance(v, torch.Tensor) for v in values) else values[0]

    per = states[0]["state"]
    return {"state": {i: {k: stack([s["state"][i][k] for s in states]) for k in per[i]} for i in per},
            "param_groups": states[0]["param_groups"]}  # fmt: skip


def _model_opt_state(state: dict, m: int) -> dict:
    """Model ``m``'s slice of the stacked optimiser's state: what its own SGD would have saved."""
    return {"state": {i: {k: v[m].clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                      for i, s in state["state"].items()}, "param_groups": state["param_groups"]}  # fmt: skip


def _fit_together(models, blocks, train_sets, test_set, cfg, seeds, runs, device, progress, on_epoch_end):
    for model in models:
        place_model(model, blocks, cfg, device)
    histories, start, elapsed, opt_states, sched_state = _restored(models, runs, cfg, device)
    st = _Stacked(models, blocks)
    opt, sched = sgd_and_schedule([st.params[n] for n in st.order], cfg)
    if opt_states is not None:
        opt.load_state_dict(_stacked_opt_state(opt_states))
        sched.load_state_dict(sched_state)
    n, size = len(train_sets[0]), len(models)
    evals = eval_epochs(cfg.epochs, cfg.eval_every)
    cuda = [device] if device.type == "cuda" else []
    t0 = last_save = time.perf_counter()
    bar = tqdm(range(start, cfg.epochs + 1), desc=f"epochs ({size} models)", disable=not progress,
               initial=start - 1, total=cfg.epochs)  # fmt: skip
    for epoch in bar:
        loss_sum = torch.zeros(size, dtype=torch.float64, device=device)
        correct = torch.zeros(size, dtype=torch.long, device=device)
        with torch.random.fork_rng(devices=cuda):
            orders, states = [], []
            for seed in seeds:  # each model's batch order, then its generator state for its augmentation
                torch.manual_seed(epoch_seed(seed, epoch))
                orders.append(index_batches(torch.randperm(n).to(device), cfg.batch_size))
                states.append(_rng_state(cuda))
            for step in range(len(orders[0])):
                xs, ys = [], []
                for m, data in enumerate(train_sets):
                    _set_rng_state(states[m], cuda)
                    idx = orders[m][step].to(data.images.device)
                    xs.append(to_layout(data.transform(data.images[idx]).to(device), cfg))
                    ys.append(data.labels[idx].to(device))
                    states[m] = _rng_state(cuda)
                x, y = torch.cat(xs).view(size, -1, *xs[0].shape[1:]), torch.stack(ys)
                set_modes(models[0], st.template, cfg.frozen_bn)
                with autocast(cfg.precision, device):
                    logits = st.logits(x, batched=True)
                losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
                losses = losses.view(size, -1).mean(1)
                if not torch.isfinite(losses).all():
                    bad = int((~torch.isfinite(losses)).nonzero()[0])
                    raise UserError(
                        f"training diverged: the loss of {runs[bad].root} became {losses[bad].item()} in epoch "
                        f"{epoch} (learning rate {opt.param_groups[0]['lr']:g}); lower --lr. The last saved states "
                        "are kept"
                    )
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                loss_sum += losses.detach().double() * y.shape[1]
                correct += (logits.argmax(-1) == y).sum(1)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if epoch in evals:
            accs = _test_accuracies(st, models[0], test_set, cfg, device)
            for m in range(size):
                histories[m].append({"epoch": epoch, "train_loss": loss_sum[m].item() / n,
                                     "train_acc": correct[m].item() / n, "test_acc": accs[m], "lr": lr})  # fmt: skip
                atomic_write_jsonl(runs[m].metrics, histories[m])
            bar.set_postfix(test_acc=f"{np.mean(accs):.3f}")
        if epoch in evals or time.perf_counter() - last_save >= cfg.save_every_s:
            last_save = time.perf_counter()
            st.write_back()
            opt_state, sched_state = opt.state_dict(), sched.state_dict()
            for m, (model, run) in enumerate(zip(models, runs, strict=True)):
                # the format transfer.train.fit saves and restore_state reads: resumable here or alone
                state = {"model": mutable_state(model), "optimizer": _model_opt_state(opt_state, m),
                         "scheduler": sched_state, "epoch": epoch, "history": histories[m],
                         "elapsed": elapsed + (last_save - t0) / size}  # fmt: skip
                atomic_torch_save(state, run.state, durable=False)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    st.write_back()
    wall = elapsed + (time.perf_counter() - t0) / size
    return [(h, wall) for h in histories]


@torch.no_grad()
def _test_accuracies(st: _Stacked, model, test_set: DeviceImages, cfg: TrainConfig, device) -> list[float]:
    model.eval()
    correct = torch.zeros(len(st.models), dtype=torch.long, device=device)
    for idx in index_batches(torch.arange(len(test_set)).to(test_set.images.device), 256):
        x = to_layout(test_set.transform(test_set.images[idx]).to(device), cfg)
        with autocast(cfg.precision, device):
            correct += (st.logits(x, batched=False).argmax(-1) == test_set.labels[idx].to(device)).sum(1)
    return (correct.double() / len(test_set)).tolist()


def _together_key(p: PreparedRun, start: int) -> tuple | None:
    """What runs must share to train in one loop (``None``: this one trains alone)."""
    c = p.train_cfg
    if p.augment_on != "device" or c.cache_train_prefix or c.attack is not None:
        return None
    shared = (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.eval_every, c.frozen_bn, c.precision,
              c.channels_last, c.save_every_s)  # fmt: skip
    return (p.src.sha256, str(p.blocks), str(p.device), p.cfg.target, p.resolution, p.cfg.augment, p.cfg.head_init,
            p.cfg.data_root, len(p.indices), shared, start)  # fmt: skip


def _saved_epoch(run: RunDir) -> int:
    return int(torch.load(run.state, map_location="cpu", weights_only=True)["epoch"]) if run.state.exists() else 0


def finetune_together(cfgs: Sequence[FinetuneConfig], outs: Sequence[Path | str], indices: Sequence | None = None,
                      resume: bool = False, progress: bool = True, at_once: int | None = None,
                      on_epoch_end: Callable[[int], None] | None = None) -> list[dict]:  # fmt: skip
    """:func:`transfer.finetune.finetune` for every ``(cfgs[k], outs[k], indices[k])``, runs that can share a loop
    trained in one (:func:`fit_together`, at most ``at_once`` per loop; default all), the others one at a time;
    return every run's summary in the order given.

    Runs share a loop when they differ only in their seed and training images (of one count), hold their splits on
    the device, and resume from the same saved epoch; finished runs (with ``resume``) return their summaries.
    ``on_epoch_end(epoch)`` is called after every epoch of every loop.
    """
    if len(cfgs) != len(outs) or (indices is not None and len(indices) != len(cfgs)):
        raise ValueError("finetune_together: one output directory (and one index list, if any) per setting")
    prepared = [prepare_run(c, None if indices is None else indices[k]) for k, c in enumerate(cfgs)]
    runs = [RunDir(o) for o in outs]
    summaries: list[dict | None] = [None] * len(cfgs)
    with torch_threads(cfgs[0].threads if cfgs else None), contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run.lock())
        groups: dict[tuple, list[int]] = {}
        for k, (p, run) in enumerate(zip(prepared, runs, strict=True)):
            summaries[k] = p.open(run, resume)
            if summaries[k] is None:
                key = _together_key(p, _saved_epoch(run))
                groups.setdefault(("alone", k) if key is None else key, []).append(k)
        size = at_once or len(cfgs)
        for members in groups.values():
            for lo in range(0, len(members), size):
                chunk = members[lo : lo + size]
                trained = _train(prepared, runs, chunk, progress, on_epoch_end)
                for k, (history, wall) in zip(chunk, trained, strict=True):
                    summaries[k] = prepared[k].finish(runs[k], history, wall, together=len(chunk))
    return summaries


def _train(prepared: list[PreparedRun], runs: list[RunDir], chunk: list[int], progress: bool, on_epoch_end):
    first = prepared[chunk[0]]
    if len(chunk) == 1:
        train_set, test_set = first.inputs()
        return [fit(first.src.model, first.blocks, train_set, test_set, first.train_cfg, runs[chunk[0]], first.device,
                    progress, on_epoch_end)]  # fmt: skip
    sets = [prepared[k].inputs() for k in chunk]
    return fit_together([prepared[k].src.model for k in chunk], first.blocks, [s[0] for s in sets], sets[0][1],
                        first.train_cfg, [prepared[k].cfg.seed for k in chunk], [runs[k] for k in chunk],
                        first.device, progress, on_epoch_end)  # fmt: skip

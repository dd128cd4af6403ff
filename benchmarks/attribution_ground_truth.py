"""The LDS ground truth at the field's size on a laptop, the LDS of single and ensembled attributions against it.

On an embedded 1-block run (``mnist5k-l2 -> digits``, ``--blocks 1``, ``--subset 400``, 10 epochs):

1. Cost of one retraining, today's policy against the one before (channels_last off, per-image augmentation in the
   loader), the same fine-tune of 200 images timed one after the other: in fresh processes (process start included)
   and inside one process, as a worker of the local executor runs them (torch imported once), there also as a
   retraining runs (tested after its last epoch alone): the ratios; the fine-tune's SGD steps alone, the most
   that training one model at a time with torch's kernels can gain on this machine, the frozen layers' forward in
   them, and the steps' convolutions and matrix products counted (GFLOP) against the core's rate for a large
   matrix product; and
   ``--together K`` retrainings one at a time against the same K in one loop (:mod:`transfer.together`;
   ``--together-only --device cuda`` on a GPU).
2. Influence over the trainable parameters (EK-FAC, the exact GGN by Woodbury) and the head's closed form, damping
   ``wd`` (the exact GGN also ``source``); EK-FAC and the head also ensembled over K = 2, 5, 10 models
   (``influence --ensemble K``).
3. ``validate-influence --lds 100 --repeats 5``: 500 fine-tunes on half the training images (local executor, one
   worker per core), the ground truth's reliability and ceiling, every directory's LDS with a paired interval
   against the head, and its wall time against 500 times the old policy's per-model cost.

The LDS values are findings, not targets; the ensembled methods are not chosen by their LDS here, all are shown.

    python benchmarks/attribution_ground_truth.py [--work /tmp/rt-ground-truth] [--subsets 100] [--repeats 5]
    python benchmarks/attribution_ground_truth.py --timing-only     # part 1 alone (about two minutes)
    python benchmarks/attribution_ground_truth.py --together-only --device cuda --together 16   # on a GPU
    python benchmarks/attribution_ground_truth.py --precision bf16 --work /tmp/gt-bf16 --reference /tmp/rt-ground-truth

``--precision bf16`` trains the run, and so its retrainings and ensemble members, with a bfloat16 forward (fast on a
CPU with bfloat16 units); ``--reference`` then correlates its ground truth with the fp32 one's, subset by subset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from study.sweeps.executors import default_local_workers
from transfer.runs import RunDir

CLI = [sys.executable, "-m", "cli.main"]  # the `robust-transfer` command of this checkout
# N fine-tunes of 200 images one after the other in one process of one thread, as a local executor's worker runs them
IN_PROCESS = """
import json, shutil, sys, time
import torch
torch.set_num_threads(1)
from transfer.finetune import FinetuneConfig, finetune
out, n, flags = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
times = []
for k in range(n):
    shutil.rmtree(f"{out}/{k}", ignore_errors=True)
    t = time.perf_counter()
    base = dict(source="mnist5k-l2", target="digits", blocks="1", subset="200", epochs="10", eval_every="10",
                seed=20000000 + k, device="cpu")
    finetune(FinetuneConfig(**(base | flags)), f"{out}/{k}", progress=False)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""
# the training's own arithmetic in one process of one thread: a fine-tune's 20 SGD steps (200 images, batches of 128,
# 10 epochs) on inputs made beforehand, without evaluation, augmentation, files or set-up: what any policy that trains
# one model at a time must still pay on this machine
STEPS = """
import json, sys, time
import torch
import torch.nn.functional as F
import torch.utils.flop_counter
torch.set_num_threads(1)
from transfer.precision import autocast, resolve_precision
from transfer.freezing import split_frozen_prefix, unfreeze_last_blocks
from transfer.models import replace_classifier
from transfer.zoo import load_source
model = load_source("mnist5k-l2").model.to(memory_format=torch.channels_last)
replace_classifier(model, 10, "paper", torch.Generator().manual_seed(0))
unfreeze_last_blocks(model, 1)
split = split_frozen_prefix(model, 1)
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
batches = [(torch.randn(b, 3, 28, 28).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (b,)))
           for b in (128, 72) * 10]
times, prefix = [], []
precision = resolve_precision(sys.argv[1], torch.device("cpu"))
cast = lambda: autocast(precision, torch.device("cpu"))  # the training loop's own: bf16 autocast, else a no-op
def loss_of(x, y):
    with cast():
        with torch.no_grad():
            h = split.prefix(x)
        z = split.suffix(h)
    return F.cross_entropy(z.float(), y)
for _ in range(4):
    t = time.perf_counter()
    model.train()
    for x, y in batches:
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    times.append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.no_grad(), cast():  # the frozen layers' forward alone (train mode, as in the steps): what no loop can share
        for x, _ in batches:
            split.prefix(x)
    prefix.append(time.perf_counter() - t)
# the steps' convolutions and matrix products (forward and backward) against this core's rate for a large one in the
# steps' precision
with torch.utils.flop_counter.FlopCounterMode(display=False) as counted:
    for x, y in batches:
        loss_of(x, y).backward()
a, b = (torch.randn(2048, 2048, dtype=torch.bfloat16 if precision == "bf16" else torch.float32) for _ in range(2))
a @ b
t = time.perf_counter()
for _ in range(5):
    a @ b
matmul = 5 * 2 * 2048**3 / (time.perf_counter() - t)
print(json.dumps({"steps": times[1:], "prefix": prefix[1:], "flops": counted.get_total_flops(), "matmul_rate": matmul,
                  "precision": precision}))
"""
# K retrainings as a worker runs them: one at a time, then the same K in one loop (transfer.together); on --device
TOGETHER = """
import json, shutil, sys, time
import torch
from transfer.finetune import FinetuneConfig, finetune
from transfer.together import finetune_together
out, device, k, threads, precision = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
cfgs = [FinetuneConfig(source="mnist5k-l2", target="digits", blocks="1", subset="200", epochs="10", eval_every="last",
                       seed=20000000 + i, device=device, precision=precision) for i in range(k)]
shutil.rmtree(out, ignore_errors=True)
finetune(cfgs[0], f"{out}/warm", progress=False)  # first-call costs (kernels, allocator) paid once
finetune_together(cfgs[:2], [f"{out}/warm-t{i}" for i in range(2)], progress=False)
t = time.perf_counter()
for i, c in enumerate(cfgs):
    finetune(c, f"{out}/alone{i}", progress=False)
alone = time.perf_counter() - t
t = time.perf_counter()
summaries = finetune_together(cfgs, [f"{out}/together{i}" for i in range(k)], progress=False)
together = time.perf_counter() - t
assert all(s.get("together") == k for s in summaries)
print(json.dumps({"alone_s": alone, "together_s": together}))
"""
RUN = ["--source", "mnist5k-l2", "--target", "digits", "--blocks", "1", "--epochs", "10", "--no-progress"]


def cli(*args) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _ratio(seconds: dict, what: str) -> float:
    """Print and return ``before / now``."""
    ratio = seconds["before"] / seconds["now"]
    print(f"{what}: before {seconds['before']:.2f} s, now {seconds['now']:.2f} s: {ratio:.2f}x", flush=True)
    return ratio


def _together(work: Path, device: str, k: int, precision: str, facts: dict) -> None:
    """``k`` retrainings one at a time against the same ``k`` in one loop, in one process on ``device`` (1 thread on
    a CPU, as a local worker): the ratio."""
    done = subprocess.run([sys.executable, "-c", TOGETHER, str(work / "together"), device, str(k), "1", precision],
                          check=True, capture_output=True, text=True)  # fmt: skip
    t = json.loads(done.stdout.strip().splitlines()[-1])
    facts[f"together_{device}"] = {"models": k, **t}
    print(f"{k} retrainings on {device}, one at a time {t['alone_s']:.2f} s, in one loop {t['together_s']:.2f} s: "
          f"{t['alone_s'] / t['together_s']:.2f}x", flush=True)


def _against(here: Path, there: Path, rel: dict, reference: Path) -> dict:
    """This ground truth against another one on the same subsets, seeds and test images (another precision or
    version of the code): the Spearman of their subset effects per test image (mean over the test images), beside
    this one's reliability (what two independent sets of its repeats would reach), and of every single retraining
    with its twin (same subset and seed)."""
    from study.attribution.ground_truth import spearman_columns

    a, b = ({k: np.load(d / f"{k}.npy") for k in ("masks", "test_indices", "train_indices", "targets", "outputs")}
            for d in (here, there))  # fmt: skip
    if any(not np.array_equal(a[k], b[k]) for k in ("masks", "test_indices", "train_indices")):
        raise SystemExit(f"{there} holds other subsets or test images: not comparable subset by subset")
    m, r, q = a["outputs"].shape
    effects = float(np.nanmean(spearman_columns(a["targets"], b["targets"])))
    twins = float(np.nanmean(spearman_columns(a["outputs"].reshape(m * r, q), b["outputs"].reshape(m * r, q))))
    within = (f" (two independent sets of {r} repeats here: about {rel['reliability']:.3f}, this one's reliability)"
              if rel else "")  # fmt: skip
    print(f"\nagainst the ground truth of {reference}: subset effects (means of {r} repeats) Spearman {effects:.3f} per "
          f"test image{within}; each retraining against its twin (same subset and seed): {twins:.3f}", flush=True)
    return {"reference": str(reference), "effects_spearman": effects, "twins_spearman": twins,
            "reliability_here": rel.get("reliability")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/rt-ground-truth")
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ensembles", default="2,5,10")
    ap.add_argument("--timed", type=int, default=4, help="fine-tunes timed per policy")
    ap.add_argument("--timing-only", action="store_true", help="part 1 alone")
    ap.add_argument("--together", type=int, default=4, help="retrainings timed one at a time and in one loop")
    ap.add_argument("--device", default="cpu", help="where --together-only trains (cpu, cuda)")
    ap.add_argument("--together-only", action="store_true", help="the one-loop timing alone, on --device")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="the run's training precision, so its retrainings' and ensemble members' (the earlier "
                    "policy it is timed against stays fp32)")  # fmt: skip
    ap.add_argument("--reference", type=Path, help="the --work of another run of this benchmark (another --precision or code version): "
                    "its ground truth correlated with this one's, subset by subset")  # fmt: skip
    a = ap.parse_args()
    if a.together < 2:
        ap.error("--together: at least 2 retrainings (one loop of them against one at a time)")
    if a.together_only:
        _together(Path(a.work), a.device, a.together, a.precision, {})
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not (run / "summary.json").exists():
        cli("finetune", *RUN, "--subset", 400, "--precision", a.precision, "--out", run)
    elif (kept := RunDir(run).recorded()["precision"]) != a.precision:
        raise SystemExit(f"{run} was trained with --precision {kept}; give another --work for {a.precision}")
    facts = {"run": str(run), "subsets": a.subsets, "repeats": a.repeats, "precision": a.precision}
    if a.precision == "bf16":
        print("bf16: the forward runs in bfloat16 (what is trained differs from fp32 by its round-off), so the ratios "
              "against the earlier fp32 policy below are not like for like", flush=True)  # fmt: skip

    # 1. one retraining, today's policy against the one before (one process each, threads as the executor gives)
    per = {}
    for name, flags in (("before", ["--channels-last", "off", "--augment-on", "loader"]),
                        ("now", ["--precision", a.precision])):  # fmt: skip
        times = []
        for k in range(a.timed):
            out = work / "timed" / f"{name}{k}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            times.append(cli("finetune", *RUN, "--subset", 200, "--seed", 20000000 + k, "--threads", 1, *flags,
                             "--out", out))  # fmt: skip
        per[name] = sorted(times)[len(times) // 2]
    facts["fine_tune_s"] = per
    facts["speedup_per_model"] = _ratio(per, f"one fine-tune of 200 images (1 thread, median of {a.timed}, process "
                                        "start included)")  # fmt: skip
    inside = {}
    policies = (("before", {"channels_last": "off", "augment_on": "loader"}), ("now", {"precision": a.precision}),
                ("retraining", {"eval_every": "last", "precision": a.precision}))  # fmt: skip
    for name, flags in policies:
        done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(work / "in-process" / name), str(a.timed + 1),
                               json.dumps(flags)], check=True, capture_output=True, text=True)  # fmt: skip
        times = json.loads(done.stdout.strip().splitlines()[-1])[1:]  # the first pays for the first-call warm-up
        inside[name] = sorted(times)[len(times) // 2]
    facts["fine_tune_in_process_s"] = inside
    facts["speedup_in_process"] = _ratio(inside, f"the same inside one process (as a worker runs them, median of "
                                         f"{a.timed} after one warm-up)")  # fmt: skip
    facts["speedup_retraining"] = _ratio({"before": inside["before"], "now": inside["retraining"]},
                                         "the same as a retraining runs it (tested after its last epoch alone)")
    done = subprocess.run([sys.executable, "-c", STEPS, a.precision], check=True, capture_output=True, text=True)
    timed = json.loads(done.stdout.strip().splitlines()[-1])
    steps, prefix = (sorted(timed[k])[1] for k in ("steps", "prefix"))
    facts["steps_alone_s"], facts["frozen_forward_s"] = steps, prefix
    facts["best_one_at_a_time"] = inside["before"] / steps
    gflop, rate = timed["flops"] / 1e9, timed["matmul_rate"] / 1e9
    facts["steps_gflop"], facts["matmul_gflops"] = gflop, rate
    print(f"the 20 SGD steps alone (no evaluation, augmentation, files or set-up; median of 3): {steps:.2f} s: no "
          f"policy that trains one model at a time with these kernels can beat {inside['before'] / steps:.2f}x here "
          f"(3x needs {inside['before'] / 3:.2f} s a fine-tune); the frozen layers' forward in them (train mode, each "
          f"model's own images and batch statistics): {prefix:.2f} s. Their {gflop:.0f} GFLOP of convolutions and "
          f"matrix products ran at {gflop / steps:.0f} GFLOPS, against {rate:.0f} for a 2048 x 2048 matrix product on "
          f"this core in {timed['precision']} (at that rate: {gflop / rate:.2f} s)", flush=True)  # fmt: skip
    _together(work, "cpu", a.together, a.precision, facts)
    if a.timing_only:
        (work / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
        return

    # 2. influence directories
    inf = work / "influence"
    dirs = {}
    common = ["--run", run, "--test", 100, "--no-progress"]
    wd = ["--damping", "wd"]
    # the exact GGN also at the `source` rule: its LDS moves with the damping most (benchmarks/damping_sensitivity.py)
    specs = {"head": ["--rcond", "exact", *wd], "ekfac": ["--params", "trainable", "--method", "ekfac", *wd],
             "ggn": ["--params", "trainable", "--method", "ggn", "--damping", "wd,source"]}  # fmt: skip
    for k in [int(x) for x in a.ensembles.split(",")]:
        specs[f"head-ens{k}"] = specs["head"] + ["--ensemble", k]
        specs[f"ekfac-ens{k}"] = specs["ekfac"] + ["--ensemble", k]
    seconds = {}
    for name, flags in specs.items():
        dirs[name] = inf / name
        if not (dirs[name] / "meta.json").exists():
            seconds[name] = cli("influence", *common, *flags, "--out", dirs[name])
            print(f"influence {name}: {seconds[name]:.1f} s", flush=True)
    facts["influence_s"] = seconds

    # 3. the ground truth and every LDS
    val = work / "validate"
    t = cli("validate-influence", "--run", run, "--out", val, "--lds", a.subsets, "--repeats", a.repeats, "--test", 100,
            "--tests", 2, "--removals", 3, "--random", 2, "--influence", ",".join(map(str, dirs.values())),
            "--no-progress")  # fmt: skip
    lds = json.loads((val / "validate.json").read_text())["lds"]
    n = a.subsets * a.repeats
    facts["validate_s"] = t
    workers = default_local_workers(0, os.cpu_count() or 1)[0]  # what validate-influence's local executor starts
    facts["estimated_before_s"] = n * inside["before"] / workers
    rel = lds.get("reliability") or {}
    facts["reliability"] = rel
    print(f"\nground truth: {a.subsets} subsets x {a.repeats} repeats = {n} fine-tunes; validate-influence took "
          f"{t / 60:.1f} min (the fine-tunes, the LDS and a head refit check); the {n} fine-tunes alone at the earlier "
          f"policy's cost inside a worker, on {workers} workers: {facts['estimated_before_s'] / 60:.1f} min",
          flush=True)  # fmt: skip
    if rel:
        print(f"reliability {rel['reliability']:.3f}, ceiling {rel['ceiling']:.3f} "
              f"[{rel['ceiling_interval'][0]:.3f}, {rel['ceiling_interval'][1]:.3f}]")  # fmt: skip
    print("\n| attribution | models | LDS [95% CI] | LDS / ceiling | minus the head (paired) [95% CI] |")
    print("|---|---|---|---|---|")
    rows = []
    for r in lds["scores"]:
        name = Path(r["influence"]).name
        paired = r.get("paired")
        p = (
            f"{paired['difference']:+.3f} [{paired['interval'][0]:+.3f}, {paired['interval'][1]:+.3f}]"
            if paired
            else ""
        )
        ratio = f"{r['lds_over_ceiling']:.2f}" if r.get("lds_over_ceiling") is not None else ""
        print(f"| {name} ({r['setting']}) | {r['ensemble']} | {r['lds']:+.3f} [{r['interval'][0]:+.3f}, "
              f"{r['interval'][1]:+.3f}] | {ratio} | {p} |")  # fmt: skip
        rows.append({"name": name, **{k: r[k] for k in ("setting", "ensemble", "lds", "interval")},
                     "lds_over_ceiling": r.get("lds_over_ceiling"), "paired": paired})  # fmt: skip
    facts["scores"] = rows
    if a.reference is not None:
        facts["against_reference"] = _against(val / "lds" / "ground_truth", a.reference / "validate" / "lds" /
                                              "ground_truth", rel, a.reference)  # fmt: skip
    (work / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
    print(f"\nwrote {work / 'facts.json'}")


if __name__ == "__main__":
    main()

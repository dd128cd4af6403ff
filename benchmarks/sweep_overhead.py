"""What the sweep machinery adds per run (worker start, ledger, IPC, model load) against the runs themselves.

Runs the same fine-tunes twice on this machine: once as plain ``finetune()`` calls in a loop in
this process, once through ``run_sweep`` with one local worker of the same thread count, and
prints the relative overhead. Target (issue 8): under 5% for the CPU grid's runs.

    python benchmarks/sweep_overhead.py [--grid examples/cpu_grid.toml] [--seeds N] [--threads 2]

The two are timed in the order plain, sweep, sweep, plain (``--repeat 2``, the default), so a
drift of the machine's speed during the benchmark cancels out of the comparison.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch

from study.sweeps.coordinator import SweepConfig, run_sweep
from study.sweeps.grid import read_grid
from transfer.finetune import finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(Path(__file__).resolve().parents[1] / "examples" / "cpu_grid.toml"))
    ap.add_argument("--seeds", type=int, default=None, help="seeds per size (default: the grid's own)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--repeat", type=int, choices=(1, 2), default=2, help="1: plain, sweep; 2: plain, sweep, sweep, plain"
    )
    args = ap.parse_args()
    text = Path(args.grid).read_text()
    if args.seeds is not None:
        text = re.sub(r"^(\d+|all) = \d+$", rf"\1 = {args.seeds}", text, flags=re.M)
    torch.set_num_threads(args.threads)
    times = {"plain": 0.0, "sweep": 0.0}
    order = ["plain", "sweep"] if args.repeat == 1 else ["plain", "sweep", "sweep", "plain"]
    with tempfile.TemporaryDirectory() as tmp:
        grid_path = Path(tmp) / "grid.toml"
        grid_path.write_text(text)
        runs = read_grid(grid_path).runs()
        for i, kind in enumerate(order):
            out = Path(tmp) / f"{kind}{i}"
            t = time.perf_counter()
            if kind == "plain":
                for spec in runs:
                    finetune(spec.config(), out / spec.key, progress=False)
            else:
                counts = run_sweep(
                    SweepConfig(str(grid_path), str(out), workers=1, threads=args.threads), progress=False
                )
                assert counts["done"] == len(runs), counts
            times[kind] += time.perf_counter() - t
    direct, swept = times["plain"] / args.repeat, times["sweep"] / args.repeat
    overhead = (swept - direct) / direct
    print(f"{len(runs)} runs, 1 worker x {args.threads} threads, order {', '.join(order)}: "
          f"plain loop {direct:.1f} s, sweep {swept:.1f} s (means)")  # fmt: skip
    print(f"sweep overhead: {overhead:+.1%} of the runs' own time ({(swept - direct) / len(runs):+.2f} s per run; "
          f"target < 5%)")  # fmt: skip


if __name__ == "__main__":
    main()

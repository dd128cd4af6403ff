"""The CPU quick start through the Python API: fine-tune both shipped sources on `digits`, explain
both runs with influence at the paper's cut-off, and compare their class-match rates.

Every call here is what a `robust-transfer` command does (finetune, influence, class-match).

    python examples/cpu_quickstart.py [--out runs/api] [--subset 500] [--epochs 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from study.attribution import InfluenceConfig, run_influence
from study.attribution.class_match import LEVEL, class_match_report
from transfer.finetune import FinetuneConfig, finetune


def main(out: str = "runs/api", subset: int = 500, epochs: int = 10, test: str = "200") -> dict:
    root = Path(out)
    dirs = {}
    for source in ("mnist5k-l2", "mnist5k-natural"):
        run = root / source
        cfg = FinetuneConfig(source=source, target="digits", blocks="1", subset=str(subset), epochs=str(epochs),
                             device="cpu")  # fmt: skip
        summary = finetune(cfg, run, progress=False)
        print(f"{source:<16} fine-tuned: test accuracy {summary['final_test_acc']:.3f}")
        dirs[source] = root / f"influence-{source}"
        meta = run_influence(InfluenceConfig(run=str(run), out=str(dirs[source]), test=test, rcond="paper,exact",
                                             device="cpu"), progress=False)  # fmt: skip
        print(f"{'':<16} influence: {meta['settings'][0]['label']}, kept {meta['rank_kept']} directions")
    report = class_match_report([str(d) for d in dirs.values()], k=100)
    for (setting, target), stats in report.paired.items():
        if target == "test":
            d, lo, hi = stats["top1"]
            print(f"top-1 class match, robust - natural, {setting}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                  f"({LEVEL:.0%} paired bootstrap over test images)")  # fmt: skip
    return {"dirs": dirs, "paired": report.paired}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/api")
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.out, args.subset, args.epochs)

"""The LDS's sensitivity to the damping: the head's exact inverse, EK-FAC and the exact GGN over the fine-tuned block,
each at the stated rules (``wd``, ``source``) and a few numbers, scored on one ground truth.

On the full demo's robust seed-0 run (``mnist5k-l2 -> digits``, 1 block, 400 images, 10 epochs: the same settings,
trained again here) and a ground truth of the demo's size (20 class-covering halves x 3 retrainings, 200 test images,
the loss as the measured output):

1. ``influence --damping 0,wd,1e-3,1e-2,1e-1,source`` for the head's exact inverse and the exact GGN over the block
   (Woodbury: one eigendecomposition, every damping from it), the same without 0 for EK-FAC (it needs damping > 0);
2. ``validate-influence --lds 20 --repeats 3 --tests 0`` scoring every setting of the three directories at once;
3. the table: one row per damping, one column per method, the LDS with its 95% interval.

A reading of how far a score moves with a setting, not a way to choose one: no damping is picked here by its LDS (the
demo and the other benchmarks use ``wd``, fixed before any score was seen).

    python benchmarks/damping_sensitivity.py [--work /tmp/rt-damping]      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "cli.main"]  # the `robust-transfer` command of this checkout
RUN = ["--source", "mnist5k-l2", "--target", "digits", "--blocks", "1", "--subset", "400", "--epochs", "10",
       "--eval-every", "10", "--seed", "20000000"]  # fmt: skip
DAMPINGS = "0,wd,1e-3,1e-2,1e-1,source"
METHODS = {  # column name: directory, influence flags, dampings
    "head, exact inverse": ("head", ["--rcond", "exact"], DAMPINGS),
    "EK-FAC, trainable": ("ekfac", ["--params", "trainable", "--method", "ekfac"], DAMPINGS.removeprefix("0,")),
    "exact GGN (Woodbury), trainable": ("ggn", ["--params", "trainable", "--method", "ggn"], DAMPINGS),
}
TEST = 200


def cli(*args) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *map(str, args), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _dampings(directory: Path) -> dict[str, tuple[str, float]]:
    """Each setting's label -> its damping's name (the rule, ``wd`` or ``source``, with its value; else the number)
    and value."""
    out = {}
    for s in json.loads((directory / "meta.json").read_text())["settings"]:
        rule = s["damping_rule"]
        out[s["label"]] = (f"`{rule}` = {s['damping']:g}" if rule else f"{s['damping']:g}", s["damping"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/rt-damping")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not (run / "summary.json").exists():
        cli("finetune", *RUN, "--device", "cpu", "--out", run)
    dirs, seconds = {}, {}
    for name, (directory, flags, dampings) in METHODS.items():
        dirs[name] = work / "influence" / directory
        if not (dirs[name] / "meta.json").exists():
            seconds[name] = cli("influence", "--run", run, *flags, "--damping", dampings, "--test", TEST, "--device",
                                "cpu", "--out", dirs[name])  # fmt: skip
            print(f"influence, {name} ({dampings}): {seconds[name]:.1f} s", flush=True)
    val = work / "validate"
    t = cli("validate-influence", "--run", run, "--out", val, "--lds", 20, "--repeats", 3, "--tests", 0, "--test", TEST,
            "--influence", ",".join(map(str, dirs.values())), "--device", "cpu")  # fmt: skip
    lds = json.loads((val / "validate.json").read_text())["lds"]
    rel = lds["reliability"]
    print(f"validate-influence: {t:.1f} s; ground truth 20 halves x 3 retrainings, ceiling {rel['ceiling']:.3f}\n")

    names = {str(d): n for n, d in dirs.items()}
    dampings = {str(d): _dampings(d) for d in dirs.values()}
    table: dict[str, dict[str, str]] = {}
    values = {}
    for r in lds["scores"]:
        damping, values[damping] = dampings[r["influence"]][r["setting"]]
        table.setdefault(damping, {})[names[r["influence"]]] = (
            f"{r['lds']:+.3f} [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]"
        )
    order = sorted(table, key=values.get)
    print("| damping | " + " | ".join(METHODS) + " |")
    print("|---" * (len(METHODS) + 1) + "|")
    for d in order:
        print(f"| {d} | " + " | ".join(table[d].get(m, "-") for m in METHODS) + " |")
    facts = {"ceiling": rel["ceiling"], "influence_s": seconds, "validate_s": t, "table": table}
    (work / "facts.json").write_text(json.dumps(facts, indent=2))
    print(f"\nwrote {work / 'facts.json'}")


if __name__ == "__main__":
    main()

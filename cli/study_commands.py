"""The study commands: sweep (and sweep status), summarize, plot. Parsing and printing only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.dataclass_args import add_dataclass_arguments, dataclass_from_args
from transfer.errors import UserError


def _sweep(args) -> None:
    from study.sweeps.coordinator import SweepConfig, failure_message, run_sweep, sweep_status

    if args.grid == "status":  # robust-transfer sweep status DIR
        if not args.dir:
            raise UserError("usage: robust-transfer sweep status DIR")
        status = sweep_status(args.dir)
        print(" ".join(f"{k} {status[k]}" for k in ("done", "running", "failed", "pending")))
        for key, error in status["failed_runs"]:
            print(f"failed: {key}: {error}")
        return
    if args.dir:
        raise UserError(f"unexpected argument {args.dir!r}; the sweep directory is given with --out")
    if args.dry_run:
        from study.sweeps.grid import check_runnable, read_grid
        from study.sweeps.plan import format_plan, plan_grid

        grid = read_grid(args.grid)
        check_runnable(grid, args.grid)
        print(format_plan(grid, plan_grid(grid, args.images_per_second, args.plan_device), args.workers or 1))
        return
    if args.out is None:
        raise UserError("robust-transfer sweep GRID needs --out DIR")
    counts = run_sweep(dataclass_from_args(SweepConfig, args), progress=not args.no_progress)
    print(json.dumps(counts))
    failed = failure_message(args.out, counts)
    if failed:  # a sweep with failed runs is not done: a non-zero exit, so scripts and the demo do not go on
        raise UserError(failed)


def _influence_study(args) -> None:
    from study.attribution.over_seeds import InfluenceStudyConfig, run_influence_study

    report = run_influence_study(dataclass_from_args(InfluenceStudyConfig, args), progress=not args.no_progress)
    print(f"{report['cell']} over seeds {report['seeds']}:")
    for line in report["reading"]:
        print("  " + line)
    print(f"wrote {report['out']}/study.json, study.csv, study.png (and one influence directory per run)")


def _summarize(args) -> None:
    from study.sweeps.summary import summarize_sweep

    out = Path(args.out or Path(args.dir) / "summary")
    texts = summarize_sweep(args.dir, out, args.accuracy, args.natural, compare=args.compare == "paper",
                            allow_partial=args.allow_partial)  # fmt: skip
    for text in texts.values():
        print(text)
    print(f"wrote {', '.join(sorted(str(p) for p in out.glob('*.csv')))} and Markdown beside them")


def _plot(args) -> None:
    from study.sweeps.figures import plot_sweep

    options = {"which": args.accuracy, "blocks": args.blocks, "natural": args.natural, "size": args.size,
               "source": args.source}  # fmt: skip
    written = plot_sweep(args.dir, args.figure, args.out, args.allow_partial, **options)
    print("wrote " + ", ".join(map(str, written)))


def _reading_options() -> argparse.ArgumentParser:
    """What summarize and plot share: the sweep directory, where to write, which accuracy, the natural source."""
    from study.sweeps.summary import ACCURACIES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("dir", help="sweep directory")
    common.add_argument("--out", default=None, help="where to write (default: DIR/summary or DIR/figures)")
    common.add_argument("--accuracy", choices=ACCURACIES, default="final",
                        help="final: after the last epoch (the paper's choice); best: best evaluated epoch")  # fmt: skip
    common.add_argument("--natural", default=None, help="the natural source (default: the one the zoo marks natural)")
    common.add_argument("--allow-partial", action="store_true",
                        help="use a sweep that has runs not done (pending, running or failed); incomplete cells are "
                        "marked (without it such a sweep is refused)")  # fmt: skip
    return common


def register(sub) -> None:
    from study.sweeps.coordinator import SweepConfig
    from study.sweeps.figures import FIGURES

    p = sub.add_parser("sweep", help="run a grid of fine-tunes with a resumable ledger (or: sweep status DIR)")
    p.add_argument("grid", help="grid file (TOML), or the word status")
    p.add_argument("dir", nargs="?", help="with status: the sweep directory")
    p.add_argument(
        "--out", default=None, help="sweep directory (ledger and run directories); the same command resumes it"
    )
    add_dataclass_arguments(p, SweepConfig, exclude=("grid", "out"))
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs per target and size, compute) and stop")
    p.add_argument(
        "--images-per-second", type=float, default=None, help="--dry-run: use this speed instead of measuring"
    )
    p.add_argument("--plan-device", default="auto", help="--dry-run: device to measure the speed on")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sweep, on_interrupt="the ledger is consistent; run the same command again to resume")

    from study.attribution.over_seeds import InfluenceStudyConfig

    p = sub.add_parser(
        "influence-study",
        help="influence + class-match for every seed and source of one sweep cell; mean differences with intervals",
    )
    p.add_argument("sweep", help="sweep directory")
    add_dataclass_arguments(p, InfluenceStudyConfig, exclude=("sweep",))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(
        func=_influence_study, on_interrupt="finished influence directories are kept; run it again to resume"
    )

    common = _reading_options()
    p = sub.add_parser(
        "summarize", help="Table 5 of a sweep: means, 95%% intervals, paired differences", parents=[common]
    )
    p.add_argument(
        "--compare", choices=("none", "paper"), default="none", help="lay our means beside the paper's Table 5"
    )
    p.set_defaults(func=_summarize)

    p = sub.add_parser("plot", help="the paper's Figures 2-5 from a sweep (PNG and PDF)", parents=[common])
    p.add_argument("--figure", action="append", choices=FIGURES, required=True, help="figure to draw (repeat)")
    p.add_argument("--blocks", default=None, help="blocks setting to show (default 3 where run)")
    p.add_argument("--size", type=int, default=None, help="epochs figure: subset size (default 3200 where run)")
    p.add_argument("--source", default=None, help="blocks figure: the source (default the first robust one)")
    p.set_defaults(func=_plot)

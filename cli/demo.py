"""``robust-transfer demo``: parsing and printing over :mod:`study.demo.stages`."""

from __future__ import annotations

from pathlib import Path

from study.demo.stages import DemoConfig, minutes, run_demo


def _demo(args) -> None:
    from cli.dataclass_args import dataclass_from_args

    # args.run_command is the CLI's main, set by the parser that registered this command
    report = run_demo(dataclass_from_args(DemoConfig, args), args.run_command, progress=not args.no_progress)
    print(f"demo finished in {minutes(report['seconds']['total'])}; open {Path(args.out) / 'report.html'}")
    for line in report["readings"]:
        print("  " + line)


def register(sub) -> None:
    from cli.dataclass_args import add_dataclass_arguments

    p = sub.add_parser(
        "demo", help="the paper's story on the embedded data, end to end, ending in report.html (--quick: ~3 min)"
    )
    add_dataclass_arguments(p, DemoConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo, on_interrupt="finished stages are kept; run the same command again to resume")

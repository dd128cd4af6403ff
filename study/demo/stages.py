"""The demo's stages: the paper's story on the embedded data, as the commands a user would type.

Each stage runs ordinary ``robust-transfer`` commands (``sweep``, ``summarize``, ``plot``,
``influence-study``, ``class-match``, ``plot-influence``, ``validate-influence``, ``featviz``,
``saliency``) in-process, logs their output under ``DIR/logs/`` and records the exact command
lines; the report (:mod:`study.demo.report`, the reader of the ``results.json`` written here) is
built from the files those commands wrote. The commands run through a ``run_command(argv) -> exit
code`` the caller passes in (the CLI passes its ``main``), so this package imports nothing from ``cli``. A stage
that finished is recorded in ``DIR/stages/<stage>.json`` and skipped when the demo is run again;
an interrupted one is run again, and its commands resume what they had done (the sweep's ledger,
the influence-study's complete directories).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from transfer.errors import UserError
from transfer.files import OutputDir, atomic_write_json, atomic_write_text, name_patterns
from transfer.models import classifier
from transfer.runtime import Runtime

NATURAL, ROBUST = "mnist5k-natural", "mnist5k-l2"
SEED0 = 20000000


@dataclass(frozen=True)
class Scale:
    """How much the demo does: ``quick`` (2.5 minutes measured on 2 cores) or the full demo (11 minutes)."""

    blocks: tuple[int, ...]
    seeds: dict[int, int]  # subset size -> seeds
    epochs: int
    influence_size: int
    rcond: str
    test: int
    removals: tuple[int, int, int]  # validate-influence: tests, most influential, random
    featviz_iterations: int
    lds: int  # retrainings of the methods stage's linear datamodeling score
    methods: tuple[str, ...]  # the methods stage's influence methods over the trainable parameters
    lds_repeats: int = 1  # retrainings of each LDS subset (its ceiling is measured from 2 on)
    ensemble: int = 1  # models the methods stage's best attribution is averaged over
    fisher: str = "type-2"  # the methods stage's EK-FAC Fisher (--fisher): type-2 (exact GGN factors) or mc (sampled)
    exact_block: bool = True  # the exact GGN over the block (Woodbury), the EK-FAC rows' agreement reference
    expected_s: dict[str, float] = field(default_factory=dict)  # per stage, measured on 2 cores


QUICK = Scale(blocks=(1,), seeds={100: 2, 400: 2}, epochs=8, influence_size=400, rcond="paper,1e-3,exact", test=100,
              removals=(2, 5, 3), featviz_iterations=60, lds=8, methods=("ekfac",), lds_repeats=2, ensemble=2,
              fisher="mc", exact_block=False,
              expected_s={"transfer": 13, "tables": 1, "influence": 10, "methods": 121, "features": 6,
                          "report": 5})  # fmt: skip
FULL = Scale(blocks=(0, 1, 3), seeds={100: 3, 400: 3}, epochs=10, influence_size=400, rcond="paper,1e-2,1e-3,1e-4,exact",
             test=200, removals=(3, 10, 5), featviz_iterations=200, lds=20, methods=("ekfac", "arnoldi"), lds_repeats=3,
             ensemble=2,
             expected_s={"transfer": 48, "tables": 1, "influence": 17, "methods": 572, "features": 9,
                         "report": 8})  # fmt: skip


@dataclass
class DemoConfig(Runtime):
    """Settings of ``robust-transfer demo``."""

    out: str = field(default="demo", metadata={"help": "directory for everything the demo writes (re-run resumes)"})
    quick: bool = field(default=False, metadata={"help": "the short version: fewer runs, seeds and settings"})

    RUNTIME = ("device",)

    @property
    def scale(self) -> Scale:
        return QUICK if self.quick else FULL


# what the demo's directory holds; anything else there is a user's file and the directory is refused
DEMO_FILES = ("grid.toml", "sweep", "summary", "figures", "influence", "methods", "validate", "featviz", "saliency", "logs",
              "stages", "results.json", "report.html", "summary.md")  # fmt: skip


class Demo:
    """The demo's directory, its command log, the stage records and the time-left estimate."""

    def __init__(self, cfg: DemoConfig, run_command: Callable[[list[str]], int], progress: bool = True):
        self.cfg, self.progress, self.run_command = cfg, progress, run_command
        self.root = Path(cfg.out)
        self.commands: list[str] = []
        self.clock = Clock()

    def run(self, stage: str, *argv: str) -> None:
        """One ``robust-transfer`` command, in-process, its output appended to ``logs/<stage>.log``.

        A line per command says which it is and the time left, updated by how long the stage has
        taken so far, so a long stage never sits under one unchanging estimate."""
        argv = [str(a) for a in argv]
        line = "robust-transfer " + shlex.join(argv)
        _say(f"    {stage}: {' '.join(argv[:1])} ... (about {minutes(self.clock.left())} left in the demo)",
             self.progress)  # fmt: skip
        self.commands.append(line)
        log = self.root / "logs" / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        beat = Heartbeat(f"{stage}: {argv[0]}", self.clock, sys.stderr) if self.progress else contextlib.nullcontext()
        with beat, open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            print(f"$ {line}", flush=True)
            started = time.perf_counter()
            code = self.run_command(argv)
            print(f"# exit {code} after {time.perf_counter() - started:.1f} s", flush=True)
        if code != 0:
            tail = [t for t in log.read_text().strip().splitlines() if not t.startswith("# exit ")][-1:]
            raise UserError(f"demo stage {stage}: `{line}` failed ({tail[0] if tail else code}); see {log}")

    def stage_file(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"


HEARTBEAT_S = 60.0


class Heartbeat:
    """While a command runs (its own output going to its log), a line every ``every`` seconds on ``stream`` with the
    command's elapsed time and the demo's time left: a long stage shows it is alive, terminal or not."""

    def __init__(self, what: str, clock: Clock, stream, every: float = HEARTBEAT_S):
        self.what, self.clock, self.stream, self.every = what, clock, stream, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        started = time.perf_counter()
        while not self._stop.wait(self.every):
            print(f"    {self.what} still running, {minutes(time.perf_counter() - started)} so far (about "
                  f"{minutes(self.clock.left())} left in the demo)", file=self.stream, flush=True)  # fmt: skip

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Clock:
    """Time left from the stages' expected durations (measured on 2 cores), scaled by how fast this
    machine has been: ``rate`` = time spent / time expected over the finished stages, raised as soon
    as the current stage runs over its own expectation."""

    spent: float = 0.0  # seconds in finished stages
    expected_done: float = 0.0  # their expected seconds
    stage_expected: float = 0.0
    rest_expected: float = 0.0  # expected seconds of the stages after the current one (report included)
    stage_started: float = field(default_factory=time.perf_counter)

    def start(self, stage_expected: float, rest_expected: float) -> None:
        self.stage_expected, self.rest_expected = stage_expected, rest_expected
        self.stage_started = time.perf_counter()

    def finish(self) -> float:
        """Close the current stage; return its seconds."""
        seconds = time.perf_counter() - self.stage_started
        self.spent, self.expected_done = self.spent + seconds, self.expected_done + self.stage_expected
        return seconds

    def left(self) -> float:
        elapsed = time.perf_counter() - self.stage_started
        rate = self.spent / self.expected_done if self.expected_done else 1.0
        if self.stage_expected:
            rate = max(rate, elapsed / self.stage_expected)
        return max(self.stage_expected * rate - elapsed, 0.0) + self.rest_expected * rate


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig, run_command: Callable[[list[str]], int], progress: bool = True) -> dict:
    """Every stage in order (finished ones skipped), then ``results.json`` and ``report.html``.

    ``run_command(argv) -> exit code`` runs one ``robust-transfer`` command in-process (the CLI's
    ``main``, passed in so that this module does not import the module that registers it)."""
    from transfer.device import resolve_device

    device = str(resolve_device(cfg.device))
    demo = Demo(cfg, run_command, progress)
    # held for the demo's whole life, not only by the commands inside it; a directory with a user's files is refused
    with OutputDir(demo.root, "demo", name_patterns(*DEMO_FILES)):
        return _stages(demo, cfg.scale, device, progress)


def _stages(demo: Demo, scale: Scale, device: str, progress: bool) -> dict:
    stages = [("transfer", _transfer), ("tables", _tables), ("influence", _influence), ("methods", _methods),
              ("features", _features)]  # fmt: skip
    results = {}
    for i, (name, fn) in enumerate(stages, 1):
        record = demo.stage_file(name)
        if record.exists():
            results[name] = json.loads(record.read_text())
            demo.commands += results[name]["commands"]
            _say(f"[demo {i}/{len(stages) + 1}] {name}: done earlier, kept", progress)
            continue
        rest = sum(scale.expected_s[n] for n, _ in stages[i:]) + scale.expected_s["report"]
        demo.clock.start(scale.expected_s[name], rest)
        _say(f"[demo {i}/{len(stages) + 1}] {name} (about {minutes(demo.clock.left())} left)", progress)
        before = len(demo.commands)
        out = fn(demo, scale, device)  # a failed command raises: the stage is not recorded as done
        results[name] = {**out, "seconds": demo.clock.finish(), "commands": demo.commands[before:]}
        atomic_write_json(record, results[name])
    _say(f"[demo {len(stages) + 1}/{len(stages) + 1}] report", progress)
    t = time.perf_counter()
    # the stages' own seconds, each from the invocation that ran it: a resumed demo's total counts them all
    report = _report(demo, results, device, sum(r["seconds"] for r in results.values()))
    report["seconds"]["report"] = time.perf_counter() - t
    report["seconds"]["total"] += report["seconds"]["report"]
    return report


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def grid_text(scale: Scale, device: str) -> str:
    """The sweep grid of the demo's transfer stage (TOML)."""
    seeds = "\n".join(f"{size} = {n}" for size, n in scale.seeds.items())
    return (
        f'name = "demo"\nsources = ["{NATURAL}", "{ROBUST}"]\ntargets = ["digits"]\nblocks = {list(scale.blocks)}\n\n'
        f"[seeds]\n{seeds}\n\n[finetune]\nepochs = {scale.epochs}\neval_every = {scale.epochs}\nsave_every = 0\n"
        f'device = "{device}"\n'
    )


def _transfer(demo: Demo, scale: Scale, device: str) -> dict:
    grid = demo.root / "grid.toml"
    atomic_write_text(grid, grid_text(scale, device))
    demo.run("transfer", "sweep", grid, "--out", demo.root / "sweep", "--no-progress")
    return {"grid": grid.read_text()}


def _read_tables(**paths: Path) -> dict:
    """Each CSV's rows under its name, and its header under ``columns`` (the stage records are JSON with
    sorted keys, so the report takes the commands' column order from there)."""
    out: dict = {"columns": {}}
    for name, path in paths.items():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            out[name] = list(reader)
            out["columns"][name] = list(reader.fieldnames or [])
    return out


def _tables(demo: Demo, scale: Scale, device: str) -> dict:
    sweep, summary, figures = demo.root / "sweep", demo.root / "summary", demo.root / "figures"
    demo.run("tables", "summarize", sweep, "--out", summary)
    shown = ["--figure", "accuracy", "--figure", "delta"] + (["--figure", "blocks"] if len(scale.blocks) > 1 else [])
    demo.run("tables", "plot", sweep, "--out", figures, "--blocks", "1", *shown)
    return {
        **_read_tables(table5=summary / "table5.csv", paired=summary / "paired.csv"),
        "figures": sorted(str(p.relative_to(demo.root)) for p in figures.glob("*.png")),
    }


def _influence(demo: Demo, scale: Scale, device: str) -> dict:
    from study.attribution.over_seeds import cell_runs
    from study.attribution.settings import RCOND_VALIDATE
    from study.sweeps.coordinator import SweepDir

    sweep, out = demo.root / "sweep", demo.root / "influence"
    size = str(scale.influence_size)
    demo.run("influence", "influence-study", sweep, "--size", size, "--blocks", "1", "--rcond", scale.rcond,
             "--test", scale.test, "--k", 50, "--out", out, "--device", device, "--no-progress")  # fmt: skip
    with SweepDir(sweep).open_ledger() as ledger:
        _, runs = cell_runs(ledger.rows("done"), sweep, "digits", "1", size)
    rob, nat = out / ROBUST / f"s{SEED0}", out / NATURAL / f"s{SEED0}"
    demo.run("influence", "class-match", rob, nat, "--k", 50, "--exclude-self", "--csv", out / "class_match.csv")
    demo.run("influence", "plot-influence", rob, nat, "--top", 6, "--png-dir", out)
    tests, removals, random = scale.removals
    validation = {}
    for source in (ROBUST, NATURAL):
        target = demo.root / "validate" / source
        demo.run("influence", "validate-influence", "--run", runs[source][SEED0], "--out", target, "--tests", tests,
                 "--removals", removals, "--random", random, "--rcond", RCOND_VALIDATE, "--test", scale.test,
                 "--device", device)  # fmt: skip
        validation[source] = json.loads((target / "validate.json").read_text())
    study = json.loads((out / "study.json").read_text())
    return {
        "study": {
            k: study[k]
            for k in ("cell", "natural", "robust", "seeds", "settings", "rates", "differences", "reading", "method")
        },  # fmt: skip
        **_read_tables(paired_seed0=out / "class_match_paired.csv"),
        "validation": {s: {"refit": r["refit"], "settings": r["settings"]} for s, r in validation.items()},
        "figures": [
            str(p.relative_to(demo.root))
            for p in (
                out / "study.png",
                out / "class_match.png",
                out / "class_match_sensitivity.png",
                out / "influence_heatmap.png",
                *sorted(out.glob("influence_grid_*.png")),
                *[demo.root / "validate" / s / "validate.png" for s in (ROBUST, NATURAL)],
            )
        ],  # fmt: skip
    }


def _methods(demo: Demo, scale: Scale, device: str) -> dict:
    from study.demo.methods import methods_stage

    return methods_stage(demo, scale, device, NATURAL, ROBUST, SEED0)


def live_units(models: list[torch.nn.Module], images: torch.Tensor, count: int = 4) -> tuple[list[int], dict]:
    """Units of the penultimate representation that fire on real images in every model: the ``count``
    with the largest smallest-over-models mean activation. Returns them and the number of live units per model."""
    import interp

    means = []
    for model in models:
        head = classifier(model)
        z, _, _ = interp.head_features(model, head, [(images, torch.zeros(len(images), dtype=torch.long))])
        means.append(z.mean(0).cpu().numpy())
    floor = np.min(np.stack(means), axis=0)
    chosen = [int(i) for i in np.argsort(-floor, kind="stable")[:count] if floor[i] > 0]
    if not chosen:
        raise UserError("no unit of the penultimate representation fires on the images in every model")
    return chosen, {"live_per_model": [int((m > 0).sum()) for m in means], "size": int(len(floor))}


def _features(demo: Demo, scale: Scale, device: str) -> dict:
    from transfer.datasets import Transformed, load_raw_splits
    from transfer.transforms import build_transform
    from transfer.zoo import load_source

    loaded = [load_source(s) for s in (NATURAL, ROBUST)]
    _, test = load_raw_splits("mnist5k")
    data = Transformed(test, build_transform(loaded[0].input_size, train=False))
    images = torch.stack([data[i][0] for i in range(256)])
    units, live = live_units([m.model.eval() for m in loaded], images)
    out = demo.root / "featviz"
    demo.run("features", "featviz", "--model", NATURAL, "--model", ROBUST, "--features", ",".join(map(str, units)),
             "--seeds", "noise:2", "--iterations", scale.featviz_iterations, "--out", out, "--device", device)  # fmt: skip
    sal = demo.root / "saliency"
    demo.run("features", "saliency", "--model", NATURAL, "--model", ROBUST, "--dataset", "mnist5k", "--images", 6,
             "--out", sal, "--device", device)  # fmt: skip
    return {
        "units": units,
        "units_live": live,
        **_read_tables(featviz=out / "featviz.csv", saliency=sal / "saliency_saliency.csv"),
        "saliency_method": "saliency (gradient of the loss)",
        "figures": [
            str((out / "featviz.png").relative_to(demo.root)),
            *[str(p.relative_to(demo.root)) for p in sorted(sal.glob("saliency_*.png"))],
        ],  # fmt: skip
    }


def _report(demo: Demo, results: dict, device: str, total_s: float) -> dict:
    from study.demo.report import environment, readings, write_report

    report = {
        "config": asdict(demo.cfg),
        "device": device,
        "transfer_sources": [NATURAL, ROBUST],
        "environment": environment(),
        "commands": ["robust-transfer demo " + shlex.join(_demo_argv(demo.cfg)), *demo.commands],
        "seconds": {name: r["seconds"] for name, r in results.items()} | {"total": total_s},
        **{name: {k: val for k, val in r.items() if k not in ("seconds", "commands")} for name, r in results.items()},
    }
    report["readings"] = readings(report)
    atomic_write_json(demo.root / "results.json", report)
    write_report(report, demo.root)
    return report


def _demo_argv(cfg: DemoConfig) -> list[str]:
    return [
        "--out",
        cfg.out,
        *(["--quick"] if cfg.quick else []),
        *(["--device", cfg.device] if cfg.device != "auto" else []),
    ]

"""Influence over seeds: does the natural-vs-robust class-match difference survive the seed and the cut-off?

One cell of a finished sweep (target, blocks, subset size) has one fine-tuned run per source and
seed. For every such run this computes an ordinary influence directory (:mod:`study.attribution`,
same settings for all, skipped when a complete one with those settings exists, so a killed study
resumes), the class-match rates per setting (:mod:`study.attribution.class_match`), and then, over seeds:

    rate(source, setting)     mean over seeds, 95% Student-t interval (n - 1 degrees of freedom)
    d_s = rate_s(robust) - rate_s(natural)   per seed s (same subset, same test images)
    difference                mean of d_s with its 95% Student-t interval

so that a conclusion never rests on one seed, and each cut-off shows whether it flips it. Python::

    from study.attribution.over_seeds import InfluenceStudyConfig, run_influence_study
    report = run_influence_study(InfluenceStudyConfig(sweep="sweeps/cpu", size="400", blocks="1"))
"""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from interp import INVERSES
from interp.inverses import FISHER_DEFAULT
from study.attribution import InfluenceConfig, run_influence
from study.attribution.class_match import class_match_report
from study.attribution.ensemble import fine_tune_members
from study.attribution.inputs import up_to_date
from study.attribution.settings import EXECUTION, RCOND_STUDY, RUN_DATA_ROOT, SHARED, influence_field
from study.attribution.store import DERIVED
from study.sweeps.grid import RunSpec, source_dirs
from study.sweeps.summary import Interval, natural_source, verdict
from transfer import validation as v
from transfer.errors import UserError
from transfer.files import OutputDir, atomic_write_csv, atomic_write_figure, atomic_write_json, name_patterns
from transfer.runtime import Runtime, runtime_help

STATISTICS = {"top1": "top-1", "at_least_3_of_5": ">= 3 of top 5"}
# the influence settings a study fixes for every run; the rest are InfluenceConfig's defaults
STUDY_FILES = ("study.json", "study.csv", "study.png")


@dataclass(kw_only=True)
class InfluenceStudyConfig(Runtime):
    """Settings of ``robust-transfer influence-study``."""

    sweep: str = field(metadata={"help": "sweep directory (robust-transfer sweep) holding the fine-tuned runs"})
    size: str = field(metadata={"help": "subset size of the cell to study (a size of the grid, or all)"})
    blocks: str = field(default="1", metadata={"help": "blocks setting of the cell"})
    target: str | None = field(default=None, metadata={"help": "target of the cell (default: the grid's only one)"})
    out: str | None = field(
        default=None,
        metadata={
            "help": "default: SWEEP/influence/<target>/b<blocks>/n<size>[-<params>][-<method>][-<fisher>] (the suffixes for other than the defaults)"
        },
    )
    natural: str | None = field(default=None, metadata={"help": "the natural source (default: the zoo's)"})
    test: str = influence_field("test", default="200",
                                help="test images per run: all or N (the same ones for every run)")  # fmt: skip
    rcond: str | None = influence_field(
        "rcond", help=f"cut-offs, as influence --rcond (default: {RCOND_STUDY} for the head's Hessian, whose "
        "comparison the paper's cut-off may flip; the method's own for ggn, blockdiag and arnoldi; none for methods "
        "without a cut-off)")  # fmt: skip
    damping: str = influence_field("damping")
    normalize: str = influence_field("normalize")
    refit_head: bool = influence_field("refit_head")
    features_dtype: str = influence_field("features_dtype")
    params: str = influence_field("params")
    method: str = influence_field("method")
    options: dict = influence_field("options")
    ensemble: int = influence_field("ensemble")
    executor: str = influence_field("executor")
    retrain_workers: int | None = influence_field("retrain_workers")
    address: str | None = influence_field("address")
    together: int = influence_field("together")
    arnoldi_rank: InitVar[int | None] = None  # as earlier versions took them (they go to ``options``)
    fisher: InitVar[str | None] = None
    k: int | None = field(
        default=None,
        metadata={"help": "ranks of the class-match curves (default 100, or all training images if fewer)"},
    )
    exclude_self: bool = field(default=True, metadata={"help": "train x train: leave each image's own entry out"})
    data_root: str | None = field(
        default=None, metadata=runtime_help("data_root", help=RUN_DATA_ROOT.replace("the run", "each run"))
    )

    RUNTIME = ("device", "threads", "data_root")

    def __post_init__(self, arnoldi_rank=None, fisher=None):
        legacy = {"arnoldi_rank": arnoldi_rank, "fisher": fisher}
        self.options = {**dict(self.options), **{k: val for k, val in legacy.items() if val is not None}}
        v.count_or_word("size", self.size, ("all",))
        if self.k is not None:
            v.integer("k", self.k, low=1)
        super().__post_init__()
        if self.rcond is None and self.method in INVERSES.names():
            method = INVERSES.get(self.method)
            if method.cutoff and method.default_rcond == "paper":
                self.rcond = RCOND_STUDY  # the paper's cut-off and the others it is read against
        self.options = self.influence_config("run", "out").options  # every setting checked, the options resolved

    def influence_config(self, run: str, out: str) -> InfluenceConfig:
        return InfluenceConfig(run=run, out=out, device=self.device, threads=self.threads, data_root=self.data_root,
                               **{k: getattr(self, k) for k in SHARED + EXECUTION})  # fmt: skip


def cell_runs(
    rows: list[dict], sweep: str | Path, target: str | None, blocks: str, size: str
) -> tuple[str, dict[str, dict[int, Path]]]:
    """``(target, {source: {seed: run_dir}})`` of the done ledger rows in one cell; run directories
    under ``sweep`` as it is named now (the sweep may have been moved since it ran)."""
    targets = sorted({r["settings"]["target"] for r in rows})
    if target is None:
        if len(targets) != 1:
            raise UserError(f"the sweep has targets {', '.join(targets) or '(none done)'}; pass --target")
        target = targets[0]
    runs: dict[str, dict[int, Path]] = {}
    for r in rows:
        s = r["settings"]
        if s["target"] == target and str(s["blocks"]) == str(blocks) and str(s["subset"]) == str(size):
            runs.setdefault(s["source"], {})[int(s["seed"])] = RunSpec(r["key"], s).run_dir(sweep)
    if not runs:
        raise UserError(f"no finished run in the sweep for target {target}, blocks {blocks}, size {size}")
    return target, runs


def _variant(cfg: InfluenceStudyConfig) -> str:
    """The default directory's suffix for a method, selection or ensemble other than the default (head, auto, one
    model), so studies of several methods on one cell sit side by side."""
    fisher = cfg.options.get("fisher", FISHER_DEFAULT)
    parts = [p for p, default in ((cfg.params, "fc"), (cfg.method, "auto"), (fisher, FISHER_DEFAULT))
             if p != default and p != "head"]  # fmt: skip
    parts += [f"ens{cfg.ensemble}"] if cfg.ensemble > 1 else []
    return "".join("-" + p.replace(",", "+").replace(".", "_") for p in parts)


def run_influence_study(cfg: InfluenceStudyConfig, progress: bool = True, rows: list[dict] | None = None) -> dict:
    """Influence, class-match and the over-seed comparison of one sweep cell; writes ``study.json``,
    ``study.csv`` and ``study.png`` under the output directory and returns the report."""
    from study.sweeps.coordinator import SweepDir

    if rows is None:
        with SweepDir(cfg.sweep).open_ledger() as ledger:
            rows = ledger.rows("done")
    target, runs = cell_runs(rows, cfg.sweep, cfg.target, cfg.blocks, cfg.size)
    natural = natural_source(sorted(runs), cfg.natural)
    robust = [s for s in sorted(runs) if s != natural]
    if not robust:
        raise UserError(f"the cell holds only the natural source {natural}; nothing to compare it with")
    out = Path(cfg.out or Path(cfg.sweep) / "influence" / target / f"b{cfg.blocks}" / f"n{cfg.size}{_variant(cfg)}")
    seeds = sorted(set.intersection(*(set(runs[s]) for s in runs)))
    if not seeds:
        raise UserError(f"no seed has a finished run for every source of the cell ({', '.join(sorted(runs))})")
    names = source_dirs(runs)
    ours = name_patterns(*STUDY_FILES, *DERIVED, "class_match_paired.csv", *names.values())
    with OutputDir(out, "influence-study", ours):
        dirs = _influence_dirs(cfg, runs, seeds, out, names, progress)
        rates = {}  # (source, seed) -> {setting label: {stat: rate}}
        for (source, seed), path in tqdm(dirs.items(), desc="class match", disable=not progress):
            report = class_match_report([str(path)], k=cfg.k, exclude_self=cfg.exclude_self)
            res = report.results[0]
            rates[(source, seed)] = {
                st["label"]: {stat: float(report.curves[(res.label, st["label"])]["test"].rows[stat].mean())
                              for stat in STATISTICS}
                for st in res.settings
            }  # fmt: skip
        report = _compare(cfg, target, natural, robust, seeds, rates)
        atomic_write_json(out / "study.json", report)
        atomic_write_csv(out / "study.csv", *_csv(report))
        atomic_write_figure(out / "study.png", study_figure(report))
    report["out"] = str(out)
    return report


def _influence_dirs(cfg, runs, seeds, out: Path, names: dict[str, str], progress: bool) -> dict[tuple[str, int], Path]:
    dirs = {}
    todo = [(source, seed) for source in sorted(runs) for seed in seeds]
    # out / names[source]: a directory name, also for a source given as a path
    cfgs = {(source, seed): cfg.influence_config(str(runs[source][seed]), str(out / names[source] / f"s{seed}"))
            for source, seed in todo}  # fmt: skip
    stale = {key: c for key, c in cfgs.items() if not up_to_date(Path(c.out), c)}
    if cfg.ensemble > 1:  # every run's extra models on one executor, its workers started once
        fine_tune_members(list(stale.values()), progress)
    for key in tqdm(todo, desc="influence per run", disable=not progress):
        if key in stale:
            run_influence(stale[key], progress=False)
        dirs[key] = Path(cfgs[key].out)
    return dirs


def _compare(cfg, target, natural, robust, seeds, rates) -> dict:
    settings = list(rates[(natural, seeds[0])])
    sources = [natural, *robust]
    rate_rows, diff_rows = [], []
    for setting in settings:
        for stat in STATISTICS:
            for source in sources:
                values = [rates[(source, s)][setting][stat] for s in seeds]
                rate_rows.append(_interval_row(Interval.of(values), source=source, setting=setting, statistic=stat,
                                               per_seed=values))  # fmt: skip
            for source in robust:
                d = [rates[(source, s)][setting][stat] - rates[(natural, s)][setting][stat] for s in seeds]
                diff_rows.append(_interval_row(Interval.of(d), robust=source, natural=natural, setting=setting,
                                               statistic=stat, per_seed=d))  # fmt: skip
    return {
        "config": asdict(cfg),
        "cell": {"target": target, "blocks": cfg.blocks, "size": cfg.size},
        "natural": natural,
        "robust": robust,
        "seeds": seeds,
        "settings": settings,
        "rates": rate_rows,
        "differences": diff_rows,
        "method": "class-match of test images per run (k and exclude_self as configured); mean over seeds with a "
        "95% Student-t interval; differences are per seed (same subset and test images), robust minus natural",
        "reading": reading(diff_rows),
    }


def _interval_row(iv: Interval, **fields) -> dict:
    return {**fields, "mean": iv.mean, "low": None if np.isnan(iv.low) else iv.low,
            "high": None if np.isnan(iv.high) else iv.high, "n_seeds": iv.n}  # fmt: skip


def reading(diff_rows: list[dict]) -> list[str]:
    """One plain sentence per (robust source, statistic): what the seeds support at each setting."""
    out = []
    for robust in dict.fromkeys(r["robust"] for r in diff_rows):
        for stat, name in STATISTICS.items():
            parts = []
            for r in (r for r in diff_rows if r["robust"] == robust and r["statistic"] == stat):
                parts.append(f"{r['setting']}: {r['mean']:+.3f} ({verdict(r['low'], r['high'], r['n_seeds'])})")
            out.append(f"{name} class match, {robust} minus {diff_rows[0]['natural']}: " + "; ".join(parts))
    return out


def _csv(report: dict) -> tuple[list[str], list[list]]:
    header = ["kind", "source", "versus", "setting", "statistic", "mean", "low", "high", "n_seeds", "per_seed"]
    rows = [["rate", r["source"], "", r["setting"], r["statistic"], r["mean"], r["low"], r["high"], r["n_seeds"],
             " ".join(f"{x:.4f}" for x in r["per_seed"])] for r in report["rates"]]  # fmt: skip
    rows += [["difference", r["robust"], r["natural"], r["setting"], r["statistic"], r["mean"], r["low"], r["high"],
              r["n_seeds"], " ".join(f"{x:+.4f}" for x in r["per_seed"])] for r in report["differences"]]  # fmt: skip
    return header, rows


def study_figure(report: dict):
    """Per statistic: the rates per source against the setting (mean over seeds, t interval), and the
    robust-minus-natural difference with its interval and the seeds' own points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    x = np.arange(len(settings))
    fig, axes = plt.subplots(2, len(STATISTICS), figsize=(5.5 * len(STATISTICS), 7), squeeze=False)
    for col, (stat, name) in enumerate(STATISTICS.items()):
        ax = axes[0, col]
        for source in [report["natural"], *report["robust"]]:
            rows = [r for r in report["rates"] if r["source"] == source and r["statistic"] == stat]
            _band(ax, x, rows, source)
        ax.set_ylabel(f"{name} class match (test)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: mean over {len(report['seeds'])} seeds, 95% t interval", fontsize=9)
        ax = axes[1, col]
        for robust in report["robust"]:
            rows = [r for r in report["differences"] if r["robust"] == robust and r["statistic"] == stat]
            line = _band(ax, x, rows, f"{robust} - {report['natural']}")
            for i, r in enumerate(rows):
                ax.scatter(np.full(len(r["per_seed"]), i), r["per_seed"], s=8, color=line.get_color(), alpha=0.5)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(f"difference in {name} class match")
        ax.set_title("robust minus natural, per seed (dots) and mean", fontsize=9)
        for a in axes[:, col]:
            a.set_xticks(x, settings, rotation=25, ha="right", fontsize=7)
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    cell = report["cell"]
    fig.suptitle(f"{cell['target']}, blocks {cell['blocks']}, {cell['size']} images: class match vs influence setting",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def _band(ax, x, rows, label):
    mean = [r["mean"] for r in rows]
    line = ax.plot(x, mean, marker="o", label=label)[0]
    if all(r["low"] is not None for r in rows):
        ax.fill_between(x, [r["low"] for r in rows], [r["high"] for r in rows], color=line.get_color(), alpha=0.2)
    return line

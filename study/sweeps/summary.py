"""Table 5 of the paper from a sweep's ledger: means with 95% Student-t intervals over seeds, paired differences.

For a cell (target, n_train, blocks, source) with accuracies ``a_1..a_n`` over seeds (in percent):

    mean = (1/n) sum a_i,   s = sqrt( sum (a_i - mean)^2 / (n - 1) ),
    95% interval = mean -/+ t_{0.975, n-1} * s / sqrt(n)            (none for n = 1)

Paired differences: the same seed gives the same subset and head initialisation, so for a robust
source R and the natural source N the per-seed differences ``d_i = a_i(R) - a_i(N)`` are summarised
the same way; an interval that excludes 0 is a difference the seeds support.

Which accuracy: ``final`` (test accuracy after the last epoch, what the paper's figures and tables
use: its plotting notebook keeps each run's highest epoch) or ``best`` (the best evaluated epoch,
which peeks at the test set).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scipy import stats

from transfer.errors import UserError
from transfer.zoo import get_source, source_names

ACCURACIES = ("final", "best")
ACCURACY_RANGE = (0.0, 100.0)  # shown intervals of accuracies are clipped to it; CSVs keep the raw bounds
SUMMARY_FILES = ("table5.csv", "table5.md", "paired.csv", "paired.md", "compare_paper.csv", "compare.md")
# the paper's sources (torchvision's natural ResNet-50, the robustness library's robust ones), by the columns of
# its Table 5; Salman et al.'s models of the same threat models are compared too, marked as other files
PAPER_COLUMNS = {"resnet50-natural": "natural", "resnet50-l2-3-engstrom": "l2_3", "resnet50-linf-4-engstrom": "linf_4",
                 "resnet50-linf-8-engstrom": "linf_8"}  # fmt: skip
SIMILAR_COLUMNS = {"resnet50-l2-3": "l2_3", "resnet50-linf-4": "linf_4", "resnet50-linf-8": "linf_8"}


@dataclass(frozen=True)
class Interval:
    """Mean, 95% Student-t interval and count of a sample."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Interval:
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, math.nan, math.nan, n)
        sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n)

    def text(self, digits: int = 2, clip: tuple[float, float] | None = None) -> str:
        """``mean [low, high]`` (see :func:`interval_text`); the CSVs keep the raw bounds."""
        return interval_text(self.mean, self.low, self.high, self.n, digits, clip)


# Under this many seeds a t interval over them is not shown: with two its half-width is 12.7 standard errors, and a
# difference of rates gets an "interval" far outside [-1, 1] that says nothing. The CSVs keep the bounds.
MIN_SEEDS_FOR_INTERVAL = 3


def interval_text(mean: float, low: float | None, high: float | None, n: int | None, digits: int = 2,
                  clip: tuple[float, float] | None = None, signed: bool = False) -> str:  # fmt: skip
    """``mean [low, high]`` over ``n`` seeds, the interval clipped to ``clip`` (what the quantity can take: an
    accuracy's t interval over three seeds can pass 100%); with fewer than :data:`MIN_SEEDS_FOR_INTERVAL` seeds, the
    mean and why no interval is shown. ``n`` None: the interval is not over seeds (a bootstrap), shown as it is."""
    fmt = f"{'+' if signed else ''}.{digits}f"
    text = format(mean, fmt)
    if n is not None and n < MIN_SEEDS_FOR_INTERVAL:
        return text + (" (one seed: no interval)" if n == 1 else f" ({n} seeds: too few for an interval)")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return f"{text} [{format(low, fmt)}, {format(high, fmt)}]"


def verdict(low: float | None, high: float | None, n: int | None = None) -> str:
    """What a 95% interval of per-seed robust-minus-natural differences over ``n`` seeds supports, in words.

    A zero-width interval (every seed gave the same difference, which happens with few seeds and
    accuracies counted on a few hundred images) is said to be one, not read as excluding zero.
    """
    if n is not None and 1 < n < MIN_SEEDS_FOR_INTERVAL:
        return f"{n} seeds: too few for an interval"
    if low is None or high is None or math.isnan(low):
        return "one seed only, no interval"
    if high - low <= 1e-9 * max(1.0, abs(high)):
        return "every seed gave the same difference, a zero-width interval: too few seeds to judge"
    if low > 0:
        return "robust higher, the interval excludes zero"
    if high < 0:
        return "natural higher, the interval excludes zero"
    return "the seeds cannot tell them apart"


def accuracies(rows: list[dict], which: str = "final") -> dict[tuple, dict[int, float]]:
    """``(target, n_train, blocks, source) -> {seed: accuracy in %}`` from done ledger rows."""
    if which not in ACCURACIES:
        raise UserError(f"--accuracy must be one of {', '.join(ACCURACIES)}; got {which!r}")
    cells: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        s = r["settings"]
        cells[(s["target"], int(r["n_train"]), str(s["blocks"]), s["source"])][int(s["seed"])] = 100 * r[f"{which}_acc"]
    return dict(cells)


def cell_key(settings: dict, n_train: int | None) -> tuple | None:
    """``(target, n_train, blocks, source)`` of a run; ``n_train`` from its summary where done, else
    from the subset size (``all``: the target's known size; None where that is unknown)."""
    from transfer.datasets import split_sizes

    if n_train is None:
        subset = str(settings["subset"])
        known = split_sizes(settings["target"])
        n_train = int(subset) if subset != "all" else (known[0] if known else None)
    return None if n_train is None else (settings["target"], int(n_train), str(settings["blocks"]), settings["source"])


@dataclass(frozen=True)
class Progress:
    """How much of a sweep is done: per cell ``(runs done, runs planned)``, and the totals."""

    cells: dict[tuple, tuple[int, int]]
    done: int
    planned: int

    @classmethod
    def of(cls, rows: list[dict]) -> Progress:
        """From every ledger row (any state)."""
        full = {(r["settings"]["target"]): int(r["n_train"]) for r in rows
                if r["state"] == "done" and str(r["settings"]["subset"]) == "all"}  # fmt: skip
        cells: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for r in rows:
            s = r["settings"]
            n = r["n_train"] if r["state"] == "done" else full.get(s["target"]) if str(s["subset"]) == "all" else None
            key = cell_key(s, n)
            if key is not None:
                cells[key][0] += r["state"] == "done"
                cells[key][1] += 1
        return cls({k: (d, p) for k, (d, p) in cells.items()}, sum(r["state"] == "done" for r in rows), len(rows))

    @property
    def complete(self) -> bool:
        return self.done == self.planned

    def incomplete(self) -> dict[tuple, tuple[int, int]]:
        return {k: v for k, v in sorted(self.cells.items()) if v[0] < v[1]}

    def note(self) -> str:
        """One line for a table or figure of a partial sweep ('' when complete)."""
        if self.complete:
            return ""
        return (f"Partial sweep: {self.done} of {self.planned} runs done; {len(self.incomplete())} cell(s) have fewer "
                "runs than planned (marked *; a cell with none done has no mean).")  # fmt: skip


def table5(cells: dict[tuple, dict[int, float]]) -> dict[tuple, Interval]:
    """``(target, n_train, blocks, source) -> Interval`` over seeds."""
    return {key: Interval.of(list(by_seed.values())) for key, by_seed in sorted(cells.items())}


def natural_source(sources: list[str], natural: str | None = None) -> str:
    """The natural (not adversarially trained) source among ``sources``: given, or the one the zoo says."""
    if natural is not None:
        if natural not in sources:
            raise UserError(f"--natural {natural!r} is not a source of this sweep ({', '.join(sources)})")
        return natural
    found = [s for s in sources if s in source_names() and get_source(s).constraint == "none"]
    if len(found) != 1:
        raise UserError(f"cannot tell which source is the natural one among {', '.join(sources)}; pass --natural NAME")
    return found[0]


def paired_differences(cells: dict[tuple, dict[int, float]], natural: str) -> dict[tuple, Interval]:
    """``(target, n_train, blocks, robust source) -> Interval`` of per-seed ``acc(robust) - acc(natural)``."""
    out = {}
    for (target, n, blocks, source), by_seed in sorted(cells.items()):
        if source == natural:
            continue
        base = cells.get((target, n, blocks, natural), {})
        diffs = [by_seed[s] - base[s] for s in sorted(by_seed) if s in base]
        if diffs:
            out[(target, n, blocks, source)] = Interval.of(diffs)
    return out


def paper_table5() -> dict[tuple, dict[str, float]]:
    """The paper's Table 5 as shipped: ``(target, n_train, blocks) -> {column: accuracy %}``."""
    text = (resources.files("study") / "data" / "paper_table5.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    cols = ("natural", "l2_3", "linf_4", "linf_8")
    return {(r["target"], int(r["n_train"]), r["blocks"]): {c: float(r[c]) for c in cols} for r in rows}


def compare_with_paper(table: dict[tuple, Interval]) -> list[dict]:
    """Our means beside the paper's Table 5 wherever the same (target, size, blocks, source) cell exists."""
    paper = paper_table5()
    out = []
    for (target, n, blocks, source), iv in table.items():
        col = PAPER_COLUMNS.get(source) or SIMILAR_COLUMNS.get(source)
        ref = paper.get((target, n, blocks), {}).get(col) if col else None
        if ref is not None:
            same = "yes" if source in PAPER_COLUMNS else "no: Salman et al. 2020's model, the paper used Engstrom et al.'s"
            out.append({"target": target, "n_train": n, "blocks": blocks, "source": source, "ours": iv, "paper": ref,
                        "difference": iv.mean - ref, "papers_source": same})  # fmt: skip
    return out


def caption(which: str) -> str:
    what = "test accuracy after the last epoch (the paper's choice)" if which == "final" else (
        "best test accuracy over the evaluated epochs (optimistic: chosen on the test set)")  # fmt: skip
    return f"Mean {what}, in %, with 95% confidence intervals over seeds (Student t, n - 1 degrees of freedom)."


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _markdown(header: list[str], rows: list[list], title: str) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict], out: Path, which: str = "final", natural: str | None = None,
                  compare: bool = False, progress: Progress | None = None) -> dict[str, str]:  # fmt: skip
    """Write Table 5, the paired differences (and the paper comparison) as CSV and Markdown; return their text.

    ``rows``: the done ledger rows. ``progress`` (:meth:`Progress.of` over every row) adds runs
    done / planned per cell, lists cells with no finished run, and marks incomplete ones.
    """
    from transfer.files import atomic_write_text

    if not rows:
        raise UserError("the sweep has no finished run yet; nothing to summarise")
    cells = accuracies(rows, which)
    table = table5(cells)
    plan = progress.cells if progress is not None else {k: (iv.n, iv.n) for k, iv in table.items()}
    texts = {}
    head = ["target", "n_train", "blocks", "source", "seeds", "mean", "ci_low", "ci_high", "planned", "complete"]
    body, md = [], []
    for key in sorted(set(plan) | set(table)):
        t, n, b, s = key
        iv = table.get(key)
        done, planned = plan[key] if key in plan else (iv.n, iv.n)
        raw = [round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)] if iv else ["", "", ""]
        body.append([t, n, b, s, done, *raw, planned, done == planned])
        mark = "" if done == planned else " *"
        md.append([t, n, b, s, f"{done}/{planned}{mark}", iv.text(clip=ACCURACY_RANGE) if iv else "no run done"])
    note = progress.note() if progress is not None else ""
    title = f"Table 5 analogue. {caption(which)}" + (f"\n\n{note}" if note else "")
    texts["table5"] = _markdown(["target", "n_train", "blocks", "source", "seeds done/planned", "accuracy % [95% CI]"],
                                md, title)  # fmt: skip
    atomic_write_text(out / "table5.csv", _csv(head, body))
    sources = sorted({k[3] for k in cells})
    if len(sources) > 1:
        nat = natural_source(sources, natural)
        paired = paired_differences(cells, nat)
        head_p = ["target", "n_train", "blocks", "source", "minus", "pairs", "mean_diff", "ci_low", "ci_high"]
        body_p = [[t, n, b, s, nat, iv.n, round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)]
                  for (t, n, b, s), iv in paired.items()]  # fmt: skip
        md_p = [[t, n, b, f"{s} - {nat}", f"{iv.n}{_mark(plan, (t, n, b, s), (t, n, b, nat))}", iv.text()]
                for (t, n, b, s), iv in paired.items()]  # fmt: skip
        texts["paired"] = _markdown(
            ["target", "n_train", "blocks", "difference", "pairs", "points [95% CI]"], md_p,
            f"Paired per-seed differences (robust minus natural). {caption(which)}" + (f"\n\n{note}" if note else ""),
        )  # fmt: skip
        atomic_write_text(out / "paired.csv", _csv(head_p, body_p))
    if compare:
        rows_c = compare_with_paper(table)
        head_c = ["target", "n_train", "blocks", "source", "seeds", "ours", "paper", "difference", "the paper's source"]
        body_c = [[r["target"], r["n_train"], r["blocks"], r["source"], r["ours"].n, round(r["ours"].mean, 4), r["paper"],
                   round(r["difference"], 4), r["papers_source"]] for r in rows_c]  # fmt: skip
        md_c = [[r["target"], r["n_train"], r["blocks"], r["source"], r["ours"].n, r["ours"].text(clip=ACCURACY_RANGE),
                 r["paper"], f"{r['difference']:+.2f}", r["papers_source"]] for r in rows_c]  # fmt: skip
        none = (
            ""
            if rows_c
            else "\n(no cell of this sweep exists in the paper's Table 5: its ResNet-50 sources, 3 blocks)\n"
        )
        texts["compare"] = _markdown(head_c, md_c, f"Ours beside the paper's Table 5. {caption(which)}") + none
        atomic_write_text(out / "compare_paper.csv", _csv(head_c, body_c))
    for name, text in texts.items():
        atomic_write_text(out / f"{name}.md", text)
    return texts


def _mark(plan: dict, *keys: tuple) -> str:
    """`` *`` when any of the cells ``keys`` has fewer runs done than planned."""
    return " *" if any(plan.get(k, (0, 0))[0] < plan.get(k, (0, 0))[1] for k in keys) else ""


def read_sweep_rows(sweep: Path | str, allow_partial: bool = False) -> tuple[list[dict], Progress]:
    """The done rows of a sweep's ledger (opened read-only) and its :class:`Progress`.

    A sweep with runs not done (pending, running or failed) is refused unless ``allow_partial``:
    a table over part of the runs must be asked for knowingly.
    """
    from study.sweeps.coordinator import SweepDir

    with SweepDir(sweep).open_ledger() as ledger:
        rows = ledger.rows()
    progress = Progress.of(rows)
    if not progress.complete and not allow_partial:
        states = Counter(r["state"] for r in rows)
        left = ", ".join(f"{states[k]} {k}" for k in ("failed", "running", "pending") if states[k])
        raise UserError(
            f"the sweep {sweep} is incomplete: {progress.done} of {progress.planned} runs done ({left}); finish it "
            "(run the sweep command again, --retry-failed for failed runs) or pass --allow-partial to use what is "
            "done, with incomplete cells marked"
        )
    return [r for r in rows if r["state"] == "done"], progress


def in_sweep(sweep: Path | str, name: str):
    """``adopt`` for :class:`~transfer.files.OutputDir`: a directory at its default place in the sweep
    (``SWEEP/summary``, ``SWEEP/figures``), written there by a version from before the markers."""
    return lambda root: Path(root).resolve() == (Path(sweep) / name).resolve()


def summarize_sweep(sweep: Path | str, out: Path | str | None = None, which: str = "final", natural: str | None = None,
                    compare: bool = False, allow_partial: bool = False) -> dict[str, str]:  # fmt: skip
    """``robust-transfer summarize``: Table 5 of a sweep into ``out`` (default ``SWEEP/summary``).

    The output directory is an :class:`~transfer.files.OutputDir`: locked while written, refused
    when it holds files that are not a summary's.
    """
    from transfer.files import OutputDir, name_patterns

    rows, progress = read_sweep_rows(sweep, allow_partial)
    out = Path(out or Path(sweep) / "summary")
    with OutputDir(out, "summary", name_patterns(*SUMMARY_FILES), adopt=in_sweep(sweep, "summary")):
        return write_summary(rows, out, which, natural, compare, progress)

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
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scipy import stats

from transfer.errors import UserError
from transfer.zoo import get_source, source_names

ACCURACIES = ("final", "best")
# the paper's sources, by the columns of its Table 5
PAPER_COLUMNS = {"resnet50-natural": "natural", "resnet50-l2-3": "l2_3", "resnet50-linf-4": "linf_4",
                 "resnet50-linf-8": "linf_8"}  # fmt: skip


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

    def text(self, digits: int = 2) -> str:
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def verdict(low: float | None, high: float | None) -> str:
    """What a 95% interval of per-seed robust-minus-natural differences supports, in words.

    A zero-width interval (every seed gave the same difference, which happens with few seeds and
    accuracies counted on a few hundred images) is said to be one, not read as excluding zero.
    """
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
        col = PAPER_COLUMNS.get(source)
        ref = paper.get((target, n, blocks), {}).get(col) if col else None
        if ref is not None:
            out.append({"target": target, "n_train": n, "blocks": blocks, "source": source, "ours": iv, "paper": ref,
                        "difference": iv.mean - ref})  # fmt: skip
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
                  compare: bool = False) -> dict[str, str]:  # fmt: skip
    """Write Table 5, the paired differences (and the paper comparison) as CSV and Markdown; return their text."""
    from transfer.files import atomic_write_text

    if not rows:
        raise UserError("the sweep has no finished run yet; nothing to summarise")
    cells = accuracies(rows, which)
    table = table5(cells)
    texts = {}
    head = ["target", "n_train", "blocks", "source", "seeds", "mean", "ci_low", "ci_high"]
    body = [
        [t, n, b, s, iv.n, round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)] for (t, n, b, s), iv in table.items()
    ]
    md = [[t, n, b, s, iv.n, iv.text()] for (t, n, b, s), iv in table.items()]
    texts["table5"] = _markdown(["target", "n_train", "blocks", "source", "seeds", "accuracy % [95% CI]"], md,
                                f"Table 5 analogue. {caption(which)}")  # fmt: skip
    atomic_write_text(out / "table5.csv", _csv(head, body))
    sources = sorted({k[3] for k in cells})
    if len(sources) > 1:
        nat = natural_source(sources, natural)
        paired = paired_differences(cells, nat)
        head_p = ["target", "n_train", "blocks", "source", "minus", "pairs", "mean_diff", "ci_low", "ci_high"]
        body_p = [[t, n, b, s, nat, iv.n, round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)]
                  for (t, n, b, s), iv in paired.items()]  # fmt: skip
        md_p = [[t, n, b, f"{s} - {nat}", iv.n, iv.text()] for (t, n, b, s), iv in paired.items()]
        texts["paired"] = _markdown(
            ["target", "n_train", "blocks", "difference", "pairs", "points [95% CI]"], md_p,
            f"Paired per-seed differences (robust minus natural). {caption(which)}",
        )  # fmt: skip
        atomic_write_text(out / "paired.csv", _csv(head_p, body_p))
    if compare:
        rows_c = compare_with_paper(table)
        head_c = ["target", "n_train", "blocks", "source", "seeds", "ours", "paper", "difference"]
        body_c = [[r["target"], r["n_train"], r["blocks"], r["source"], r["ours"].n, round(r["ours"].mean, 4), r["paper"],
                   round(r["difference"], 4)] for r in rows_c]  # fmt: skip
        md_c = [[r["target"], r["n_train"], r["blocks"], r["source"], r["ours"].n, r["ours"].text(), r["paper"],
                 f"{r['difference']:+.2f}"] for r in rows_c]  # fmt: skip
        note = (
            ""
            if rows_c
            else "\n(no cell of this sweep exists in the paper's Table 5: its ResNet-50 sources, 3 blocks)\n"
        )
        texts["compare"] = _markdown(head_c, md_c, f"Ours beside the paper's Table 5. {caption(which)}") + note
        atomic_write_text(out / "compare_paper.csv", _csv(head_c, body_c))
    for name, text in texts.items():
        atomic_write_text(out / f"{name}.md", text)
    return texts

"""Class-match over influence directories: every setting, bootstrap intervals, paired differences.

Used by ``robust-transfer class-match``; callable from Python::

    from study.attribution.class_match import class_match_report
    report = class_match_report(["influence/rob", "influence/nat"], k=100, exclude_self=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp import ClassMatch, class_match, paired_difference
from study.attribution.store import InfluenceDir, InfluenceResult
from transfer.errors import UserError

LEVEL = 0.95


@dataclass
class ClassMatchReport:
    """``curves[(dir label, setting label)][target]``; ``paired[(setting label, target)]`` first minus second."""

    results: list[InfluenceResult]
    curves: dict[tuple[str, str], dict[str, ClassMatch]] = field(default_factory=dict)
    paired: dict[tuple[str, str], dict] = field(default_factory=dict)

    def csv_rows(self) -> tuple[list[str], list[list]]:
        header = ["influence_dir", "run", "setting", "target", "rank", "match_rate", "cumulative_rate",
                  "at_least_3_of_5", "top1_low", "top1_high", "three_of_five_low", "three_of_five_high"]  # fmt: skip
        rows = []
        for res in self.results:
            for st in res.settings:
                for target, cm in self.curves[(res.label, st["label"])].items():
                    ci = cm.intervals(LEVEL)
                    for r in range(cm.k):
                        rows.append([str(res.root), res.label, st["label"], target, r + 1, cm.per_rank[r],
                                     cm.cumulative[r], cm.at_least_3_of_5, *ci["top1"], *ci["at_least_3_of_5"]])  # fmt: skip
        return header, rows

    def paired_rows(self) -> tuple[list[str], list[list]]:
        header = ["first", "second", "setting", "target", "statistic", "difference", "low", "high"]
        first, second = (r.label for r in self.results[:2]) if len(self.results) >= 2 else ("", "")
        rows = [
            [first, second, setting, target, stat, *values]
            for (setting, target), stats in self.paired.items()
            for stat, values in stats.items()
        ]
        return header, rows


def _same_rows(a: InfluenceResult, b: InfluenceResult) -> bool:
    return np.array_equal(np.asarray(a["idx_test"]), np.asarray(b["idx_test"])) and np.array_equal(
        np.asarray(a["y_test"]), np.asarray(b["y_test"])
    )


DEFAULT_K = 100


def class_match_report(dirs: list[str], k: int | None = None, exclude_self: bool = False) -> ClassMatchReport:
    """Rates per directory and setting, with intervals; the first two directories' paired differences
    (when they hold the same test images) for every setting label they share.

    ``k``: ranks deep; None is :data:`DEFAULT_K`, or every training image a row can rank where there
    are fewer (the curves' ``k`` says which). A ``k`` given beyond that is an error.
    """
    if k is not None and k < 1:
        raise UserError(f"--k must be an integer >= 1, got {k}")
    report = ClassMatchReport([InfluenceDir(d).read() for d in dirs])
    ranked = min(len(res["y_train"]) - int(exclude_self) for res in report.results)
    if k is None:
        k = min(DEFAULT_K, ranked)
    elif k > ranked:
        what = " (its own entry left out)" if exclude_self else ""
        raise UserError(f"--k {k} is more than the {ranked} training images a row can rank{what}; use --k {ranked} or less")
    for res in report.results:
        y_train, y_test = res["y_train"], res["y_test"]
        for st in res.settings:
            test, train = res.setting(st["index"])
            report.curves[(res.label, st["label"])] = {
                "test": class_match(test, y_test, y_train, k=k),
                "train": class_match(train, y_train, y_train, k=k, exclude_self=exclude_self),
            }
    if len(report.results) >= 2 and _same_rows(*report.results[:2]):
        a, b = report.results[:2]
        for st in a.settings:
            if (b.label, st["label"]) in report.curves and a.label != b.label:
                for target in ("test", "train"):
                    if target == "train" and not np.array_equal(np.asarray(a["y_train"]), np.asarray(b["y_train"])):
                        continue  # different training sets: no pairing of their train x train rows
                    report.paired[(st["label"], target)] = paired_difference(
                        report.curves[(a.label, st["label"])][target], report.curves[(b.label, st["label"])][target]
                    )
    return report


def write_class_match(report: ClassMatchReport, csv_path: Path | str, png: Path | str | None = None) -> list[Path]:
    """The report's files: rates per rank (CSV), the main curves (PNG, default beside the CSV), the paired
    differences (``<csv>_paired.csv``, where there are two directories with the same test images) and, for
    directories with several settings, the sensitivity figure (``<csv>_sensitivity.png``). Returns the paths."""
    from interp.viz import class_match_figure, sensitivity_figure
    from transfer.files import atomic_write_csv, atomic_write_figure

    csv_path = Path(csv_path)
    png = Path(png or csv_path.with_suffix(".png"))
    atomic_write_csv(csv_path, *report.csv_rows())
    written = [csv_path, png]
    main_curves = {
        f"{r.label} [{r.describe()}]": report.curves[(r.label, r.settings[0]["label"])] for r in report.results
    }
    atomic_write_figure(png, class_match_figure(main_curves))
    if report.paired:
        paired_csv = csv_path.with_name(csv_path.stem + "_paired.csv")
        atomic_write_csv(paired_csv, *report.paired_rows())
        written.append(paired_csv)
    if any(len(r.settings) > 1 for r in report.results):
        sens = csv_path.with_name(csv_path.stem + "_sensitivity.png")
        series = {
            r.label: [(st["label"], report.curves[(r.label, st["label"])]["test"]) for st in r.settings]
            for r in report.results
        }
        atomic_write_figure(sens, sensitivity_figure(series))
        written.append(sens)
    return written

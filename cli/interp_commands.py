"""The ``interp`` commands: influence, class-match, plot-influence. Loading and writing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cli.dataclass_args import add_dataclass_arguments, dataclass_from_args
from transfer.errors import UserError


def _influence(args) -> None:
    from study.influence import InfluenceConfig, run_influence

    meta = run_influence(dataclass_from_args(InfluenceConfig, args), progress=not args.no_progress)
    cg = meta.get("cg", {})
    if cg and not cg["converged"]:
        print(
            f"warning: CG stopped at its iteration limit with relative residual {cg['max_relative_residual']:.3g} "
            f"(tol {cg['tol']:g}); the influence values are approximate",
            file=sys.stderr,
        )
    print(json.dumps({k: meta[k] for k in ("n_train", "n_test", "rank_kept", "cg", "timings") if k in meta}, indent=2))


def _read_all(outs: list[str]):
    from study.influence_dir import InfluenceDir

    return [InfluenceDir(out).read() for out in outs]


def _class_match(args) -> None:
    from interp.metrics import class_match
    from interp.plots import class_match_figure
    from transfer.files import atomic_write_csv, atomic_write_figure

    if args.k < 1:
        raise UserError(f"--k must be an integer >= 1, got {args.k}")
    curves, rows = {}, []
    for res in _read_all(args.outs):
        y_train, y_test = res["y_train"], res["y_test"]
        curves[res.label] = {
            "test": class_match(res["influence_test"], y_test, y_train, k=args.k),
            "train": class_match(res["influence_train"], y_train, y_train, k=args.k, exclude_self=args.exclude_self),
        }
        for target, cm in curves[res.label].items():
            for r in range(cm.k):
                rows.append(
                    [str(res.root), res.label, target, r + 1, cm.per_rank[r], cm.cumulative[r], cm.at_least_3_of_5]
                )
            print(
                f"{res.label:<40} {target:<5} top-1 {cm.per_rank[0]:.3f}  top-{cm.k} cumulative {cm.cumulative[-1]:.3f}  "
                f">=3 of top 5 {cm.at_least_3_of_5:.3f}"
            )
    csv_path = Path(args.csv or Path(args.outs[0]) / "class_match.csv")
    png = Path(args.png or csv_path.with_suffix(".png"))
    header = ["influence_dir", "run", "target", "rank", "match_rate", "cumulative_rate", "at_least_3_of_5"]
    atomic_write_csv(csv_path, header, rows)
    atomic_write_figure(png, class_match_figure(curves))
    print(f"wrote {csv_path} and {png}")


def _plot_influence(args) -> None:
    from interp.plots import heatmap_figure, influence_grid_figure
    from transfer.datasets import load_raw_splits
    from transfer.files import atomic_write_figure

    if args.top < 1:
        raise UserError(f"--top must be an integer >= 1, got {args.top}")
    results = _read_all(args.outs)
    panels = [(r.label, np.asarray(r["influence_test"]), r["y_test"], r["y_train"]) for r in results]
    dest = Path(args.png_dir or results[0].root)
    atomic_write_figure(dest / "influence_heatmap.png", heatmap_figure(panels))
    written = [dest / "influence_heatmap.png"]
    for res, (label, inf, y_test, y_train) in zip(results, panels, strict=True):
        try:
            target, data_root = res.meta["run_settings"]["target"], res.meta["config"].get("data_root")
        except (KeyError, AttributeError):
            raise UserError(f"{res.root}/meta.json does not name the run's target dataset") from None
        train_raw, test_raw = load_raw_splits(target, data_root)
        test_imgs = [test_raw[int(i)][0].numpy() for i in res["idx_test"]]
        train_imgs = _LazyImages(train_raw, res["idx_train"])
        fig = influence_grid_figure(
            inf, test_imgs, train_imgs, np.asarray(y_test), np.asarray(y_train), top=args.top, title=label
        )
        path = dest / f"influence_grid_{res.root.name}.png"
        atomic_write_figure(path, fig)
        written.append(path)
    print("wrote " + ", ".join(map(str, written)))


class _LazyImages:
    """Training images by position in the subset, read only when shown."""

    def __init__(self, raw, indices):
        self.raw, self.indices = raw, indices

    def __getitem__(self, j):
        return self.raw[int(self.indices[j])][0].numpy()


def register(sub) -> None:
    from study.influence import InfluenceConfig

    p = sub.add_parser("influence", help="influence matrices (test x train, train x train) of a fine-tuned run")
    add_dataclass_arguments(p, InfluenceConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(
        func=_influence, on_interrupt="the influence directory was left incomplete (readers refuse it); run it again"
    )

    p = sub.add_parser("class-match", help="top-k class-match rates of influence directories, CSV and PNG")
    p.add_argument("outs", nargs="+", help="influence directories (e.g. natural and robust)")
    p.add_argument("--k", type=int, default=100, help="ranks to report")
    p.add_argument("--exclude-self", action="store_true", help="train x train: ignore each image's influence on itself")
    p.add_argument("--csv", default=None, help="CSV path (default: class_match.csv in the first directory)")
    p.add_argument("--png", default=None, help="PNG path (default: beside the CSV)")
    p.set_defaults(func=_class_match)

    p = sub.add_parser("plot-influence", help="class-sorted heatmaps and grids of the most helpful training images")
    p.add_argument("outs", nargs="+", help="influence directories, shown side by side")
    p.add_argument("--top", type=int, default=8, help="training images per test image in the grid")
    p.add_argument("--png-dir", default=None, help="where to write the PNGs (default: the first directory)")
    p.set_defaults(func=_plot_influence)

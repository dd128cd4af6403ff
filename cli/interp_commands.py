"""The ``interp`` commands: influence, class-match, plot-influence. Loading and writing only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cli.dataclass_args import add_dataclass_arguments, dataclass_from_args


def _influence(args) -> None:
    from cli.influence_pipeline import InfluenceConfig, run_influence

    meta = run_influence(dataclass_from_args(InfluenceConfig, args), progress=not args.no_progress)
    print(json.dumps({k: meta[k] for k in ("n_train", "n_test", "rank_kept", "timings") if k in meta}, indent=2))


def _label(out: Path) -> str:
    meta = json.loads((out / "meta.json").read_text())
    settings = meta.get("run_settings", {})
    return f"{settings.get('source', out.name)} -> {settings.get('target', '?')}" if settings else out.name


def _load(out: Path, name: str) -> np.ndarray:
    path = out / name
    if not path.is_file():
        from transfer.errors import UserError

        raise UserError(f"{path} not found; is {out} an influence directory from robust-transfer influence?")
    return np.load(path, mmap_mode="r")


def _class_match(args) -> None:
    from interp.metrics import class_match
    from interp.plots import class_match_figure

    curves, rows = {}, []
    for out in map(Path, args.outs):
        y_train, y_test = _load(out, "y_train.npy"), _load(out, "y_test.npy")
        label = _label(out)
        curves[label] = {
            "test": class_match(_load(out, "influence_test.npy"), y_test, y_train, k=args.k),
            "train": class_match(
                _load(out, "influence_train.npy"), y_train, y_train, k=args.k, exclude_self=args.exclude_self
            ),
        }
        for target, cm in curves[label].items():
            for r in range(cm.k):
                rows.append([str(out), label, target, r + 1, cm.per_rank[r], cm.cumulative[r], cm.at_least_3_of_5])
            print(
                f"{label:<40} {target:<5} top-1 {cm.per_rank[0]:.3f}  top-{cm.k} cumulative {cm.cumulative[-1]:.3f}  "
                f">=3 of top 5 {cm.at_least_3_of_5:.3f}"
            )
    csv_path = Path(args.csv or Path(args.outs[0]) / "class_match.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["influence_dir", "run", "target", "rank", "match_rate", "cumulative_rate", "at_least_3_of_5"])
        w.writerows(rows)
    png = Path(args.png or csv_path.with_suffix(".png"))
    class_match_figure(curves).savefig(png, dpi=130)
    print(f"wrote {csv_path} and {png}")


def _plot_influence(args) -> None:
    from interp.plots import heatmap_figure, influence_grid_figure
    from transfer.datasets import load_raw_splits

    outs = list(map(Path, args.outs))
    panels = []
    for out in outs:
        panels.append(
            (
                _label(out),
                np.asarray(_load(out, "influence_test.npy")),
                _load(out, "y_test.npy"),
                _load(out, "y_train.npy"),
            )
        )
    dest = Path(args.png_dir or outs[0])
    heatmap_figure(panels).savefig(dest / "influence_heatmap.png", dpi=130)
    written = [dest / "influence_heatmap.png"]
    for out, (label, inf, y_test, y_train) in zip(outs, panels, strict=True):
        meta = json.loads((out / "meta.json").read_text())
        train_raw, test_raw = load_raw_splits(meta["run_settings"]["target"], meta["config"].get("data_root"))
        idx_train, idx_test = _load(out, "idx_train.npy"), _load(out, "idx_test.npy")
        test_imgs = [test_raw[int(i)][0].numpy() for i in idx_test]
        train_imgs = _LazyImages(train_raw, idx_train)
        fig = influence_grid_figure(
            inf, test_imgs, train_imgs, np.asarray(y_test), np.asarray(y_train), top=args.top, title=label
        )
        path = dest / f"influence_grid_{out.name}.png"
        fig.savefig(path, dpi=130)
        written.append(path)
    print("wrote " + ", ".join(map(str, written)))


class _LazyImages:
    """Training images by position in the subset, read only when shown."""

    def __init__(self, raw, indices):
        self.raw, self.indices = raw, indices

    def __getitem__(self, j):
        return self.raw[int(self.indices[j])][0].numpy()


def register(sub) -> None:
    from cli.influence_pipeline import InfluenceConfig

    p = sub.add_parser("influence", help="influence matrices (test x train, train x train) of a fine-tuned run")
    add_dataclass_arguments(p, InfluenceConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_influence)

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

"""Feature visualisations and saliency maps of source models or fine-tuned runs, written to a directory.

The Python twins of ``robust-transfer featviz`` and ``saliency``: models are loaded by name, run
directory or checkpoint (``transfer``), explained by ``interp``, and written (PNG, CSV, arrays)
into an :class:`~transfer.files.OutputDir` that is refused when it holds other files::

    from study.attribution.visual import featviz_to_dir
    report = featviz_to_dir(["mnist5k-natural", "mnist5k-l2"], "4,7", "out/featviz")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from interp.viz import (
    FeatVizConfig,
    concentration,
    featviz_figure,
    magnitude,
    saliency_figure,
    saliency_maps,
    visualize,
)
from transfer.datasets import Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.files import (
    OutputDir,
    atomic_write,
    atomic_write_csv,
    atomic_write_figure,
    atomic_write_json,
    name_patterns,
)
from transfer.transforms import build_transform

FEATVIZ_FILES = ("featviz.png", "featviz.csv")
SALIENCY_FILES = ("saliency_*.png", "saliency_*.npz", "saliency_*.csv", "saliency_*.json")


def load_models(specs: list[str], device):
    from transfer.zoo import load_source

    loaded = [load_source(s) for s in specs]
    sizes = {m.input_size for m in loaded}
    if len(sizes) > 1:
        raise UserError(f"the models take different input sizes {sorted(sizes)}; compare models of one size")
    return [
        (Path(s).name if Path(s).exists() else s, m.model.to(device).eval()) for s, m in zip(specs, loaded, strict=True)
    ], sizes.pop()


def parse_seeds(specs: list[str], size: int):
    from interp.viz import grey_seed, image_seed, noise_seeds

    seeds, labels = [], []
    for spec in specs or ["noise:3"]:
        kind, _, arg = spec.partition(":")
        if kind == "noise":
            if not (arg or "1").isdigit() or int(arg or 1) < 1:
                raise UserError(f"--seeds noise:N needs an integer N >= 1, got {spec!r}")
            n = int(arg or 1)
            seeds.append(noise_seeds(n, size, seed=len(labels)))
            labels += [f"noise{len(labels) + i}" for i in range(n)]
        elif kind == "grey":
            seeds.append(grey_seed(size))
            labels.append("grey")
        elif kind == "image":
            seeds.append(image_seed(arg, size))
            labels.append(Path(arg).stem)
        else:
            raise UserError(f"--seeds must be noise:N, grey or image:PATH, got {spec!r}")
    return torch.cat(seeds), labels


def parse_indices(text: str, name: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise UserError(f"--{name} must be comma-separated integers >= 0, got {text!r}")
    return values


def featviz_to_dir(models: list[str], features: str | list[int], out: Path | str, cfg: FeatVizConfig | None = None,
                   seeds: list[str] | None = None, device: str = "auto") -> dict:  # fmt: skip
    """Grow each unit in ``features`` from ``seeds`` (``noise:N``, ``grey``, ``image:PATH``) in every model;
    write ``featviz.png`` and ``featviz.csv`` (activation and total variation, seed and result) into
    ``out``. Returns ``{"results": {model: FeatVizResult}, "rows": [...], "paths": [...]}``."""
    cfg = cfg or FeatVizConfig()
    out = Path(out)
    with OutputDir(out, "featviz", name_patterns(*FEATVIZ_FILES)):
        dev = resolve_device(device)
        loaded, size = load_models(models, dev)
        images, seed_labels = parse_seeds(seeds, size)
        units = parse_indices(features, "features") if isinstance(features, str) else list(features)
        results = {label: visualize(model, images, units, cfg) for label, model in loaded}
        atomic_write_figure(out / "featviz.png", featviz_figure(images, results, seed_labels))
        header = ["model", "objective", "seed", "activation_seed", "activation", "rise", "tv_seed", "tv"]
        rows = [{"model": label, **row, "seed": seed_labels[row["seed"]]}
                for label, res in results.items() for row in res.rows()]  # fmt: skip
        atomic_write_csv(out / "featviz.csv", header, ([r[k] for k in header] for r in rows))
    return {"results": results, "rows": rows, "paths": [out / name for name in FEATVIZ_FILES]}


def saliency_to_dir(models: list[str], dataset: str, out: Path | str, images: str = "8", method: str = "saliency",
                    wrt: str = "loss", data_root: str | None = None, device: str = "auto") -> dict:  # fmt: skip
    """Saliency maps (captum) of every model on test images of ``dataset`` (``images``: N evenly spaced
    over the split, or comma-separated indices); writes ``saliency_<method>.png``, ``.npz`` (images and
    attributions), ``.csv`` (concentration per image) and ``.json`` into ``out``. Returns
    ``{"concentration": {model: {measure: mean}}, "rows": [...], "paths": [...]}``."""
    out = Path(out)
    with OutputDir(out, "saliency", name_patterns(*SALIENCY_FILES)):
        dev = resolve_device(device)
        loaded, size = load_models(models, dev)
        _, test = load_raw_splits(dataset, data_root)
        # N: evenly spaced over the split (embedded splits are ordered by class), else explicit indices
        if images.isdigit() and not 1 <= int(images) <= len(test):
            raise UserError(f"--images {images}: the {dataset} test split has {len(test)} images; use 1 to {len(test)}")
        idx = (np.linspace(0, len(test) - 1, int(images)).round().astype(int).tolist() if images.isdigit()
               else parse_indices(images, "images"))  # fmt: skip
        if max(idx) >= len(test):
            raise UserError(f"--images must select images 0..{len(test) - 1} of the {dataset} test split")
        data = Transformed(test, build_transform(size, train=False))
        x = torch.stack([data[i][0] for i in idx]).to(dev)
        y = torch.tensor([data[i][1] for i in idx], device=dev)
        maps, rows, means = {}, [], {}
        arrays = {"images": x.cpu().numpy(), "labels": y.cpu().numpy(), "indices": np.asarray(idx)}
        for label, model in loaded:
            n_classes = model(x[:1]).shape[1]
            if int(y.max()) >= n_classes:
                raise UserError(f"{label} has {n_classes} classes but {dataset} labels go to {int(y.max())}")
            attr = saliency_maps(model, x, y, method, wrt)
            maps[label] = magnitude(attr).cpu().numpy()
            arrays[f"attr_{label}"] = attr.cpu().numpy()
            conc = concentration(attr, x)
            means[label] = {k: float(v.mean()) for k, v in conc.items()}
            rows += [{"model": label, "index": j, "label": int(y[i]), **{k: float(v[i]) for k, v in conc.items()}}
                     for i, j in enumerate(idx)]  # fmt: skip
        stem = f"saliency_{method}"
        titles = [f"#{j} y={int(t)}" for j, t in zip(idx, y.tolist(), strict=True)]
        atomic_write_figure(out / f"{stem}.png", saliency_figure(x.cpu().numpy(), maps, titles))
        atomic_write(out / f"{stem}.npz", lambda f: np.savez_compressed(f, **arrays))
        atomic_write_csv(out / f"{stem}.csv", list(rows[0]), (r.values() for r in rows))
        atomic_write_json(out / f"{stem}.json", {"method": method, "wrt": wrt, "models": models, "dataset": dataset})
    return {"concentration": means, "rows": rows, "paths": [out / f"{stem}.{ext}" for ext in ("png", "npz", "csv")]}


class _LazyImages:
    """Training images by position in the subset, read only when shown."""

    def __init__(self, raw, indices):
        self.raw, self.indices = raw, indices

    def __getitem__(self, j):
        return self.raw[int(self.indices[j])][0].numpy()


def plot_influence_dirs(outs: list[str], top: int = 8, png_dir: Path | str | None = None) -> list[Path]:
    """The paper's Figures 6-7 for influence directories: one heatmap of every directory's test x train
    matrix (``influence_heatmap.png``) and, per directory, a grid of each shown test image beside its ``top``
    most helpful and most harmful training images (``influence_grid_<dir>.png``), in ``png_dir`` (default:
    the first directory). Returns the paths."""
    from interp.viz import heatmap_figure, influence_grid_figure
    from study.attribution.store import InfluenceDir

    if top < 1:
        raise UserError(f"--top must be an integer >= 1, got {top}")
    results = [InfluenceDir(out).read() for out in outs]
    panels = [
        (f"{r.label}\n{r.describe()}", np.asarray(r["influence_test"]), r["y_test"], r["y_train"]) for r in results
    ]
    dest = Path(png_dir or results[0].root)
    atomic_write_figure(dest / "influence_heatmap.png", heatmap_figure(panels))
    written = [dest / "influence_heatmap.png"]
    for res, (label, inf, y_test, y_train) in zip(results, panels, strict=True):
        try:
            target, data_root = res.meta["run_settings"]["target"], res.meta["config"].get("data_root")
        except (KeyError, AttributeError):
            raise UserError(f"{res.root}/meta.json does not name the run's target dataset") from None
        train_raw, test_raw = load_raw_splits(target, data_root or res.meta["run_settings"].get("data_root"))
        test_imgs = [test_raw[int(i)][0].numpy() for i in res["idx_test"]]
        fig = influence_grid_figure(inf, test_imgs, _LazyImages(train_raw, res["idx_train"]), np.asarray(y_test),
                                    np.asarray(y_train), top=top, title=label)  # fmt: skip
        path = dest / f"influence_grid_{res.root.name}.png"
        atomic_write_figure(path, fig)
        written.append(path)
    return written

"""The ``featviz`` and ``saliency`` commands: load models and images, call ``interp``, write PNG + CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transfer.errors import UserError
from transfer.files import atomic_write, atomic_write_csv, atomic_write_figure, atomic_write_json


def _models(specs: list[str], device):
    from transfer.zoo import load_source

    loaded = [load_source(s) for s in specs]
    sizes = {m.input_size for m in loaded}
    if len(sizes) > 1:
        raise UserError(f"the models take different input sizes {sorted(sizes)}; compare models of one size")
    return [
        (Path(s).name if Path(s).exists() else s, m.model.to(device).eval()) for s, m in zip(specs, loaded, strict=True)
    ], sizes.pop()


def _seeds(specs: list[str], size: int):
    from interp.featviz import grey_seed, image_seed, noise_seeds

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


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise UserError(f"--{name} must be comma-separated integers >= 0, got {text!r}")
    return values


def _featviz(args) -> None:
    from transfer.files import OutputDir, name_patterns

    # refused before any work when --out holds files that are not featviz's; held while written
    with OutputDir(Path(args.out), "featviz", name_patterns("featviz.png", "featviz.csv")):
        _featviz_into(args)


def _featviz_into(args) -> None:
    from cli.dataclass_args import dataclass_from_args
    from interp.featviz import FeatVizConfig, visualize
    from interp.plots import featviz_figure
    from transfer.device import resolve_device

    device = resolve_device(args.device)
    models, size = _models(args.model, device)
    seeds, seed_labels = _seeds(args.seeds, size)
    features = _ints(args.features, "features")
    cfg = dataclass_from_args(FeatVizConfig, args)
    results = {label: visualize(model, seeds, features, cfg) for label, model in models}
    out = Path(args.out)
    atomic_write_figure(out / "featviz.png", featviz_figure(seeds, results, seed_labels))
    header = ["model", "objective", "seed", "activation_seed", "activation", "rise", "tv_seed", "tv"]
    rows = [
        {"model": label, **row, "seed": seed_labels[row["seed"]]}
        for label, res in results.items()
        for row in res.rows()
    ]
    atomic_write_csv(out / "featviz.csv", header, ([r[k] for k in header] for r in rows))
    for label, res in results.items():
        print(
            f"{label:<24} mean activation {res.end.mean():.3f} (seed {res.start.mean():.3f}), mean TV {res.tv.mean():.4f}"
        )
    print(f"wrote {out / 'featviz.png'} and {out / 'featviz.csv'}")


def _saliency(args) -> None:
    from transfer.files import OutputDir, name_patterns

    with OutputDir(Path(args.out), "saliency", name_patterns("saliency_*.png", "saliency_*.npz", "saliency_*.csv",
                                                              "saliency_*.json")):  # fmt: skip
        _saliency_into(args)


def _saliency_into(args) -> None:
    from interp.plots import saliency_figure
    from interp.saliency import concentration, magnitude, saliency_maps
    from transfer.datasets import Transformed, load_raw_splits
    from transfer.device import resolve_device
    from transfer.transforms import build_transform

    device = resolve_device(args.device)
    models, size = _models(args.model, device)
    _, test = load_raw_splits(args.dataset, args.data_root)
    # N: evenly spaced over the split (embedded splits are ordered by class), else explicit indices
    if args.images.isdigit() and not 1 <= int(args.images) <= len(test):
        raise UserError(
            f"--images {args.images}: the {args.dataset} test split has {len(test)} images; use 1 to {len(test)}"
        )
    idx = (
        np.linspace(0, len(test) - 1, int(args.images)).round().astype(int).tolist()
        if args.images.isdigit()
        else _ints(args.images, "images")
    )
    if max(idx) >= len(test):
        raise UserError(f"--images must select images 0..{len(test) - 1} of the {args.dataset} test split")
    data = Transformed(test, build_transform(size, train=False))
    x = torch.stack([data[i][0] for i in idx]).to(device)
    y = torch.tensor([data[i][1] for i in idx], device=device)
    out = Path(args.out)
    maps, rows, arrays = {}, [], {"images": x.cpu().numpy(), "labels": y.cpu().numpy(), "indices": np.asarray(idx)}
    for label, model in models:
        n_classes = model(x[:1]).shape[1]
        if int(y.max()) >= n_classes:
            raise UserError(f"{label} has {n_classes} classes but {args.dataset} labels go to {int(y.max())}")
        attr = saliency_maps(model, x, y, args.method, args.wrt)
        maps[label] = magnitude(attr).cpu().numpy()
        arrays[f"attr_{label}"] = attr.cpu().numpy()
        conc = concentration(attr, x)
        for i, j in enumerate(idx):
            rows.append({"model": label, "index": j, "label": int(y[i]), **{k: float(v[i]) for k, v in conc.items()}})
        print(f"{label:<24} " + "  ".join(f"{k} {v.mean():.3f}" for k, v in conc.items()))
    stem = f"saliency_{args.method}"
    titles = [f"#{j} y={int(t)}" for j, t in zip(idx, y.tolist(), strict=True)]
    atomic_write_figure(out / f"{stem}.png", saliency_figure(x.cpu().numpy(), maps, titles))
    atomic_write(out / f"{stem}.npz", lambda f: np.savez_compressed(f, **arrays))
    atomic_write_csv(out / f"{stem}.csv", list(rows[0]), (r.values() for r in rows))
    atomic_write_json(
        out / f"{stem}.json", {"method": args.method, "wrt": args.wrt, "models": args.model, "dataset": args.dataset}
    )
    print(f"wrote {out / (stem + '.png')}, .npz and .csv")


def register(sub) -> None:
    from cli.dataclass_args import add_dataclass_arguments
    from interp.featviz import FeatVizConfig

    p = sub.add_parser("featviz", help="feature visualisation from noise seeds, natural vs robust side by side")
    p.add_argument("--model", action="append", required=True, help="run directory, source name or checkpoint (repeat)")
    p.add_argument("--features", required=True, help="comma-separated unit indices, e.g. 4,7,8")
    p.add_argument(
        "--seeds", action="append", default=None, help="noise:N, grey or image:PATH (repeat; default noise:3)"
    )
    add_dataclass_arguments(p, FeatVizConfig)  # --layer, --iterations, ...: FeatVizConfig's fields, help and defaults
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_featviz)

    p = sub.add_parser("saliency", help="saliency maps (captum), natural vs robust side by side")
    p.add_argument("--model", action="append", required=True, help="run directory, source name or checkpoint (repeat)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--images", default="8", help="N (evenly spaced over the test split) or comma-separated indices")
    p.add_argument("--method", choices=("saliency", "smoothgrad", "ig"), default="saliency")
    p.add_argument(
        "--wrt", choices=("loss", "logit"), default="loss", help="differentiate the loss or the label's logit"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_saliency)

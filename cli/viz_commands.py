"""The ``featviz`` and ``saliency`` commands: parsing and printing over :mod:`study.attribution.visual`."""

from __future__ import annotations


def _featviz(args) -> None:
    from cli.dataclass_args import dataclass_from_args
    from interp.viz import FeatVizConfig
    from study.attribution.visual import featviz_to_dir

    report = featviz_to_dir(args.model, args.features, args.out, dataclass_from_args(FeatVizConfig, args), args.seeds,
                            args.device)  # fmt: skip
    for label, res in report["results"].items():
        print(
            f"{label:<24} mean activation {res.end.mean():.3f} (seed {res.start.mean():.3f}), mean TV {res.tv.mean():.4f}"
        )
    print("wrote " + " and ".join(map(str, report["paths"])))


def _saliency(args) -> None:
    from study.attribution.visual import saliency_to_dir

    report = saliency_to_dir(args.model, args.dataset, args.out, args.images, args.method, args.wrt, args.data_root,
                             args.device)  # fmt: skip
    for label, means in report["concentration"].items():
        print(f"{label:<24} " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()))
    print(f"wrote {report['paths'][0]}, .npz and .csv")


def register(sub) -> None:
    from cli.dataclass_args import add_dataclass_arguments
    from interp.viz import FeatVizConfig

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

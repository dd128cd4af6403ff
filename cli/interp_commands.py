"""The ``interp`` commands: influence, class-match, plot-influence. Loading and writing only."""

from __future__ import annotations

import json
from pathlib import Path

from cli.dataclass_args import add_dataclass_arguments, dataclass_from_args


def _influence(args) -> None:
    from study.attribution import InfluenceConfig, run_influence

    meta = run_influence(dataclass_from_args(InfluenceConfig, args), progress=not args.no_progress)
    stat = meta.get("stationarity")
    if stat and stat["refit"]:
        fit = stat["refit"]
        print(
            f"head refitted to the optimum of the regularised objective: gradient norm {fit['grad_norm_before']:.2e} "
            f"-> {fit['grad_norm']:.2e}, moved {fit['relative_move']:.1%} of its norm"
        )
    elif stat:
        g = stat["grad_norm_used"]
        print(
            f"gradient norm of the regularised objective at the fine-tuned head: {g:.2e}"
            + (" (not a stationary point, where influence assumes one: consider --refit-head)" if g > 1e-4 else "")
        )
    settings = meta.get("settings", [])
    for line in dict.fromkeys(line for st in settings for line in st.get("report", [])):  # what each operator says
        print(line)
    for st in settings:
        if st.get("rank_kept") is None:
            print(st["label"])
            continue
        share = st.get("dropped_gradient_norm_share")
        carried = f"{share:.1%}" if share is not None else "(not computed)"
        print(f"{st['label']:<32} kept {st['rank_kept']} of {st['size']} directions; the dropped ones carried "
              f"{carried} of the training gradients' squared norm")  # fmt: skip
    print(json.dumps({k: meta[k] for k in ("n_train", "n_test", "rank_kept", "cg", "timings") if k in meta}, indent=2))


def _validate(args) -> None:
    from study.attribution.leave_one_out import ValidateConfig, validate_influence

    report = validate_influence(dataclass_from_args(ValidateConfig, args), progress=not args.no_progress)
    fit = report.get("refit")
    if fit:
        print(
            f"head refitted to the optimum of the regularised objective: gradient norm {fit['grad_norm_before']:.2e} "
            f"-> {fit['grad_norm']:.2e}, moved {fit['relative_move']:.1%} of its norm"
        )
    elif report.get("note"):
        print(report["note"])
    elif report.get("pbrf"):
        reached = report["pbrf"]
        print(f"the PBRF: {report['objective']}; {reached['converged']} of {reached['removed']} solves converged "
              f"(worst whitened gradient norm {reached['worst_whitened_grad_norm_ratio']:.1e} of its start, in the "
              f"weights {reached['worst_grad_norm_ratio']:.1e}), the largest move "
              f"{reached['largest_relative_move']:.2e} of the weights' norm")  # fmt: skip
    else:
        print(f"leave-one-out by retraining: {report['objective']}")
    for st in report["settings"]:
        every = (f"; over every test image x removed image: Pearson {st['pearson_every']:.4f}, Spearman "
                 f"{st['spearman_every']:.4f} ({st['n_every']} pairs)" if "pearson_every" in st else "")  # fmt: skip
        print(
            f"{st['setting']:<32} kept {st['rank_kept']}/{st['size']}: Pearson {st['pearson']:.4f}, "
            f"Spearman {st['spearman']:.4f} over {st['n_pairs']} removals{every}"
            + (f" (warning: {st['warning']})" if st.get("warning") else "")
        )
    lds = report.get("lds")
    if lds:
        print(f"linear datamodeling score: {lds['subsets']} subsets of {lds['subset_size']} of {lds['n_train']} "
              f"training images, each retrained {lds['repeats']} time(s) (seeds {', '.join(map(str, lds['seeds']))}); "
              f"measured output: {lds['target_meaning']}")  # fmt: skip
        rel = lds.get("reliability")
        if rel:
            lo, hi = rel["ceiling_interval"]
            print(f"  the ground truth's reliability {rel['reliability']:.3f} (split-half {rel['split_half']:.3f}, "
                  f"Spearman-Brown to {rel['repeats']} repeats): no attribution can reach an LDS above about "
                  f"{rel['ceiling']:.3f} [{lo:.3f}, {hi:.3f}] here")  # fmt: skip
        else:
            print("  one retraining per subset: the ground truth's own noise is not measured (--repeats 2 or more)")
        other = "margin" if lds["target"] == "loss" else "loss"
        for r in lds["scores"]:
            lo, hi = r["interval"]
            ratio = f", {r['lds_over_ceiling']:.0%} of the ceiling" if r.get("lds_over_ceiling") is not None else ""
            models = f", {r['ensemble']} models" if r.get("ensemble", 1) > 1 else ""
            print(f"  {r['method']:<9} {r['setting'] or '':<28} LDS {r['lds']:+.3f} [{lo:+.3f}, {hi:+.3f}]{ratio} "
                  f"({other}: {r[f'lds_{other}']:+.3f}) over {r['n_test']} test images; {r['params']}{models}, "
                  f"{r['influence']}")  # fmt: skip
            if "paired" in r:
                p = r["paired"]
                print(f"    minus {p['versus']}: {p['difference']:+.3f} [{p['interval'][0]:+.3f}, "
                      f"{p['interval'][1]:+.3f}] (paired; bootstrap over test images and subsets)")  # fmt: skip
            if r.get("agreement"):
                a = r["agreement"]
                print(f"    agreement with the exact result ({a['versus']}): top-{a['k']} overlap "
                      f"{a['top_k_overlap']:.3f}, Spearman {a['spearman']:.3f} over {a['n_test']} test images")
    checked = ", validate.csv, validate.png" if report["settings"] else ""
    print(f"wrote {args.out}/validate.json{checked}" + (", lds.csv, lds.png" if lds else ""))


def _class_match(args) -> None:
    from study.attribution.class_match import LEVEL, class_match_report, write_class_match

    report = class_match_report(args.outs, k=args.k, exclude_self=args.exclude_self)
    for (label, setting), per_target in report.curves.items():
        for target, cm in per_target.items():
            ci = cm.intervals(LEVEL)
            print(
                f"{label:<32} {setting:<28} {target:<5} top-1 {cm.per_rank[0]:.3f} [{ci['top1'][0]:.3f}, "
                f"{ci['top1'][1]:.3f}]  >=3 of top 5 {cm.at_least_3_of_5:.3f} [{ci['at_least_3_of_5'][0]:.3f}, "
                f"{ci['at_least_3_of_5'][1]:.3f}]  top-{cm.k} cumulative {cm.cumulative[-1]:.3f}"
            )
    for (setting, target), stats in report.paired.items():
        d, lo, hi = stats["top1"]
        first, second = report.results[0].label, report.results[1].label
        print(f"paired {first} - {second} ({setting}, {target}): top-1 {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% bootstrap)")
    written = write_class_match(report, args.csv or Path(args.outs[0]) / "class_match.csv", args.png)
    print("wrote " + ", ".join(map(str, written)))


def _plot_influence(args) -> None:
    from study.attribution.visual import plot_influence_dirs

    written = plot_influence_dirs(args.outs, args.top, args.png_dir)
    print("wrote " + ", ".join(map(str, written)))


def register(sub) -> None:
    from study.attribution import InfluenceConfig

    p = sub.add_parser("influence", help="influence matrices (test x train, train x train) of a fine-tuned run")
    add_dataclass_arguments(p, InfluenceConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(
        func=_influence, on_interrupt="the influence directory was left incomplete (readers refuse it); run it again"
    )

    p = sub.add_parser("class-match", help="top-k class-match rates of influence directories, CSV and PNG")
    p.add_argument("outs", nargs="+", help="influence directories (e.g. natural and robust)")
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="ranks to report (default 100, or every training image a row can rank where there are fewer)",
    )
    p.add_argument("--exclude-self", action="store_true", help="train x train: ignore each image's influence on itself")
    p.add_argument("--csv", default=None, help="CSV path (default: class_match.csv in the first directory)")
    p.add_argument("--png", default=None, help="PNG path (default: beside the CSV)")
    p.set_defaults(func=_class_match)

    from study.attribution.leave_one_out import ValidateConfig

    p = sub.add_parser(
        "validate-influence", help="predicted vs retrained leave-one-out on a run's refitted head, per cut-off"
    )
    add_dataclass_arguments(p, ValidateConfig)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_validate)

    p = sub.add_parser("plot-influence", help="class-sorted heatmaps and grids of the most helpful training images")
    p.add_argument("outs", nargs="+", help="influence directories, shown side by side")
    p.add_argument("--top", type=int, default=8, help="training images per test image in the grid")
    p.add_argument("--png-dir", default=None, help="where to write the PNGs (default: the first directory)")
    p.set_defaults(func=_plot_influence)

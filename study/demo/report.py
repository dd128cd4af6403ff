"""``report.html``: one self-contained page of a demo's results (figures as data URIs, no network).

Built from the ``results.json`` dictionary that :mod:`study.demo.stages` writes (every number in the page is in that
file, and in the CSVs the commands wrote). :func:`readings` turns the numbers into plain sentences
that say which way each comparison falls, including where robust does not beat natural.
"""

from __future__ import annotations

import base64
import html
import math
import platform
import sys
from importlib import metadata
from pathlib import Path

from study.sweeps.summary import MIN_SEEDS_FOR_INTERVAL, interval_text, verdict
from transfer.files import atomic_write_text

PACKAGES = ("robust-transfer", "torch", "torchvision", "numpy", "scipy", "matplotlib", "captum", "mlxtend")


def environment() -> dict:
    """Python, platform and the versions of the packages the results depend on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def _num(text) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def transfer_readings(paired: list[dict]) -> list[str]:
    """One sentence per (size, blocks) cell of the paired robust-minus-natural accuracy differences."""
    out = []
    for r in paired:
        mean, low, high, n = _num(r["mean_diff"]), _num(r["ci_low"]), _num(r["ci_high"]), int(r["pairs"])
        # under MIN_SEEDS_FOR_INTERVAL seeds interval_text and verdict would both say why no interval is shown
        few = n < MIN_SEEDS_FOR_INTERVAL
        shown = format(mean, "+.1f") if few else interval_text(mean, low, high, n, 1, (-100, 100), signed=True)
        out.append(
            f"Transfer to {r['target']}, {r['n_train']} images, {r['blocks']} block(s) unfrozen: {r['source']} minus "
            f"{r['minus']} = {shown} accuracy points over {n} seed{'s' if n != 1 else ''} ({verdict(low, high, n)})."
        )
    return out


def readings(report: dict) -> list[str]:
    """Plain-language sentences for every comparison in a demo report."""
    lines = transfer_readings(report["tables"]["paired"])
    inf = report["influence"]
    lines += [f"Influence (test images, {inf['study']['cell']['size']} training images, mean over "
              f"{len(inf['study']['seeds'])} seeds): {line}" for line in inf["study"]["reading"]]  # fmt: skip
    for source, val in inf["validation"].items():
        parts = ", ".join(f"{s['setting']} Pearson {s['pearson']:.3f} (kept {s['rank_kept']}/{s['size']})"
                          for s in val["settings"])  # fmt: skip
        lines.append(
            f"Leave-one-out check on {source} (seed 0), head refitted to the optimum (gradient norm "
            f"{val['refit']['grad_norm_before']:.2g} before): predicted vs actual change of test loss: {parts}."
        )
    if report.get("methods"):
        from study.demo.methods import method_readings, method_rows, studies_of, validated

        met = report["methods"]
        rows = method_rows(inf["study"], studies_of(met), met["lds"], met.get("ensembled"), met.get("labels"))
        repeats = met["lds"].get("repeats", 1)
        first = (f"Which attribution to believe (linear datamodeling score, LDS, over {met['lds']['subsets']} "
                 f"subsets of half the training images, each retrained {repeats} time(s); 0 = no prediction, 1 = a "
                 "perfect ranking): ")  # fmt: skip
        lines += [(first if i == 0 else "Which attribution to believe: ") + line
                  for i, line in enumerate(method_readings(rows, met["lds_source"]))]  # fmt: skip
        if met.get("ensembled"):
            lines.append(f"Which attribution is validated: {validated(rows, met['ensembled'], met.get('labels'))}.")
    feats = report["features"]
    for model in dict.fromkeys(r["model"] for r in feats["featviz"]):
        rows = [r for r in feats["featviz"] if r["model"] == model]
        rise = sum(float(r["rise"]) for r in rows) / len(rows)
        tv = sum(float(r["tv"]) for r in rows) / len(rows)
        lines.append(f"Feature visualisation, {model}: units {feats['units']} rose by {rise:.2f} on average from "
                     f"noise seeds; mean total variation of the images {tv:.4f} (lower = smoother).")  # fmt: skip
    lines.append(
        "Scale: the sources here are small ResNets trained on 5,000 MNIST digits and the target is scikit-learn's "
        "8x8 digits, a near-domain transfer at toy scale; the paper's ImageNet ResNet-50 results need not appear "
        "here, and where they do not, the sentences above say so."
    )
    return lines


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


FOLD_ROWS = 8  # longer tables are folded (<details>), their caption still shown


def _table(rows: list[dict], columns: list[str] | None = None, caption: str = "") -> str:
    if not rows:
        return f"<p>(no rows: {html.escape(caption)})</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    if len(rows) > FOLD_ROWS:
        return (f"<details><summary>{html.escape(caption)} ({len(rows)} rows)</summary><table><thead><tr>{head}"
                f"</tr></thead><tbody>{body}</tbody></table></details>")  # fmt: skip
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def with_interval(rows: list[dict], mean: str, low: str, high: str, clip: tuple[float, float], digits: int,
                  label: str, seeds: str | None = None) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Rows for display: ``mean``, ``low`` and ``high`` merged into one ``label`` cell, ``mean [low, high]``
    rounded to ``digits`` decimals with the interval clipped to ``clip`` (the valid range: a t interval
    over three seeds can pass 100%), or, where the interval is over the seeds counted in column ``seeds`` and they
    are too few, the mean and why no interval is shown (:func:`study.sweeps.summary.interval_text`); the CSVs and
    results.json keep the raw bounds. Returns the rows and columns."""
    out = []
    for r in rows:
        m, lo, hi = _num(r.get(mean)), _num(r.get(low)), _num(r.get(high))
        n = int(r[seeds]) if seeds is not None and r.get(seeds) not in (None, "") else None
        cell = "" if m is None else interval_text(m, lo, hi, n, digits, clip)
        out.append({**{k: v for k, v in r.items() if k not in (mean, low, high)}, label: cell})
    columns = [c for c in rows[0] if c not in (mean, low, high)] + [label] if rows else []
    return out, columns


def _cols(section: dict, name: str) -> list[str] | None:
    """The columns of table ``name`` in its CSV's order, where the stage recorded them."""
    return section.get("columns", {}).get(name)


def _ordered(section: dict, name: str, shown: list[str]) -> list[str]:
    """``shown``'s columns in the CSV's order where the stage recorded it, the merged interval column last."""
    recorded = [c for c in (_cols(section, name) or []) if c in shown[:-1]]
    return (recorded or shown[:-1]) + shown[-1:]


def _fmt(value) -> str:
    """Numbers with three decimals (scientific below 0.001), integers and text as they are."""
    if isinstance(value, float):
        return "" if math.isnan(value) else _decimals(value)
    if isinstance(value, list):
        return " ".join(_fmt(v) for v in value)
    x = _num(value) if isinstance(value, str) and value and not value.isdigit() else None
    return _decimals(x) if x is not None and ("." in value or "e" in value.lower()) else str(value)


def _decimals(x: float) -> str:
    return f"{x:.3f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _paragraphs(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:4px 0}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:0.8em;color:#666}code,pre{background:#f6f6f6}pre{padding:8px;overflow-x:auto}"""


def render(report: dict, root: Path) -> str:
    """The page for ``report`` (figure paths relative to ``root``)."""
    fig = lambda paths: "".join(_image(root / p) for p in paths if (root / p).exists())  # noqa: E731
    t, inf, feats = report["tables"], report["influence"], report["features"]
    diffs = [{k: r[k] for k in ("robust", "setting", "statistic", "mean", "low", "high", "n_seeds")}
             for r in inf["study"]["differences"]]  # fmt: skip
    rates = [{k: r[k] for k in ("source", "setting", "statistic", "mean", "low", "high", "n_seeds")}
             for r in inf["study"]["rates"]]  # fmt: skip
    ci = "mean [95% CI]"
    table5, table5_cols = with_interval(t["table5"], "mean", "ci_low", "ci_high", (0, 100), 1, "accuracy % " + ci,
                                        "seeds")  # fmt: skip
    paired, paired_cols = with_interval(t["paired"], "mean_diff", "ci_low", "ci_high", (-100, 100), 1, "points " + ci,
                                        "pairs")  # fmt: skip
    rates, rates_cols = with_interval(rates, "mean", "low", "high", (0, 1), 3, "class match " + ci, "n_seeds")
    diffs, diffs_cols = with_interval(diffs, "mean", "low", "high", (-1, 1), 3, "difference " + ci, "n_seeds")
    seed0, seed0_cols = with_interval(inf["paired_seed0"], "difference", "low", "high", (-1, 1), 3, "difference " + ci)
    headline = [p for p in t["figures"] if Path(p).name in ("delta.png", "accuracy.png")][:1]
    validation = [{"source": s, **{k: st[k] for k in ("setting", "rank_kept", "size", "pearson", "spearman", "n_pairs")},
                   "grad_norm_before_refit": v["refit"]["grad_norm_before"]}
                  for s, v in inf["validation"].items() for st in v["settings"]]  # fmt: skip
    env = report["environment"]
    seconds = [{"stage": k, "seconds": round(v, 1)} for k, v in report["seconds"].items()]
    body = [
        "<h1>robust-transfer demo</h1>",
        f"<p>Natural ({html.escape(report['transfer_sources'][0])}) vs adversarially robust "
        f"({html.escape(report['transfer_sources'][1])}) source models, transferred to scikit-learn's digits, "
        "explained with influence functions, feature visualisations and saliency maps, following Utrera et al. "
        "(2020), <i>Adversarially-Trained Deep Nets Transfer Better</i>. Everything below was computed by the "
        "commands listed at the end, on this machine.</p>",
        _section("What the numbers say", _paragraphs(report["readings"]), fig(headline)),
        _section(
            "Transfer accuracy (Table 5 and Figures 2-3 analogues)",
            _table(
                table5,
                _ordered(t, "table5", table5_cols),
                caption="accuracy % after the last epoch, mean and 95% Student-t interval over seeds (shown within "
                "0-100%; the CSV keeps the raw bounds)",
            ),
            _table(
                paired,
                _ordered(t, "paired", paired_cols),
                caption="paired per-seed differences, robust minus natural (accuracy points)",
            ),
            fig([p for p in t["figures"] if p not in headline]),
        ),  # fmt: skip
        _section(
            "Influence (Section 6: Figures 6-8 analogues)",
            _table(
                rates,
                rates_cols,
                caption="class match of the most helpful training images (test images), per source and "
                "cut-off, mean over seeds with 95% t interval (shown within 0-1)",
            ),
            _table(diffs, diffs_cols, caption="robust minus natural class match per cut-off, per-seed differences"),
            _table(
                seed0,
                _ordered(inf, "paired_seed0", seed0_cols),
                caption="seed 0 only: paired bootstrap over test images",
            ),
            _table(validation, caption="leave-one-out validation at the refitted head"),
            fig(inf["figures"]),
        ),  # fmt: skip
        *([_methods_section(report, fig)] if report.get("methods") else []),
        _section(
            "Feature visualisation and saliency (Figure 1 analogue)",
            f"<p>Units {feats['units']} of the {feats['units_live']['size']}-unit penultimate layer: those firing "
            f"most on real images in both models (live units per model: {feats['units_live']['live_per_model']}).</p>",
            _table(feats["featviz"], _cols(feats, "featviz"), caption="feature visualisation from noise seeds"),
            _table(feats["saliency"], _cols(feats, "saliency"), caption=f"saliency maps: {feats['saliency_method']}"),
            fig(feats["figures"]),
        ),  # fmt: skip
        _section(
            "Reproduce",
            "<pre>" + html.escape("\n".join(report["commands"])) + "</pre>",
            _table(
                [{"package": k, "version": v} for k, v in env["packages"].items()],
                caption=f"Python {env['python']} on {env['platform']}, device {report['device']}",
            ),
            _table(seconds, caption="wall time per stage (s)"),
        ),  # fmt: skip
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>robust-transfer demo</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip


def _methods_section(report: dict, fig) -> str:
    """Class match robust vs natural per method and setting, with that attribution's LDS beside it."""
    from study.demo.methods import label, method_rows, studies_of

    met = report["methods"]
    labels = met.get("labels") or {}
    rows = method_rows(report["influence"]["study"], studies_of(met), met["lds"], met.get("ensembled"), labels)
    shown, _ = with_interval(rows, "robust minus natural, top-1", "low", "high", (-1, 1), 3,
                             "robust minus natural, top-1 [95% CI]", "n_seeds")  # fmt: skip
    merged, _ = with_interval(shown, "LDS", "LDS low", "LDS high", (-1, 1), 3, "LDS [95% CI]")
    columns = ["influence", "setting", "LDS [95% CI]", "ceiling", "exact top-10", "robust minus natural, top-1 [95% CI]"]  # fmt: skip
    for r in merged:
        r["ceiling"] = "-" if r.get("ceiling") is None else f"{r['ceiling']:.3f}"
        r["exact top-10"] = "-" if r.get("exact top-10") is None else f"{r['exact top-10']:.2f}"
    exact = met.get("exact") or {}
    reference = (f" The exact top-10 column is each row's top-10 overlap with the exact result of its parameters (per "
                 f"test image, averaged): for the head, {html.escape(exact.get('head', '-'))}; for the block, "
                 f"{html.escape(exact.get('block', '-'))}; an ensemble has no single exact counterpart." if exact
                 else "")  # fmt: skip
    ens = met.get("ensembled")
    chosen = (f" The last rows average the attribution with {html.escape(ens['chosen_by'])} over {ens['models']} "
              "fine-tuned models." if ens else "")  # fmt: skip
    return _section(
        "Influence over the fine-tuned block, and which attribution to believe",
        f"<p>{html.escape(' and '.join(labels.get(m) or label(m) for m in studies_of(met)))} over the unfrozen block "
        f"and the "
        f"head, beside the head's closed form. Each row's "
        f"linear datamodeling score (LDS: Spearman, per test image, of the summed influence of a random half of the "
        f"training set with the loss of the fine-tune retrained on it, over {met['lds']['subsets']} retrainings of "
        f"{html.escape(met['lds_source'])}, each retrained {met['lds'].get('repeats', 1)} time(s) and averaged) says "
        f"how far its class-match rate can be trusted; the ceiling is the LDS a perfect attribution could reach "
        f"against this ground truth (its split-half reliability, stepped up).{reference}{chosen}</p>",
        _table(
            merged,
            columns,
            caption="validation first, then the paper's statistic (top-1 class match, "
            "robust minus natural, per-seed differences)",
        ),  # fmt: skip
        fig(met["figures"]),
    )


def markdown_summary(report: dict) -> str:
    """The headline numbers as Markdown (the README's demo section is this file, copied)."""

    def interval(r, low="ci_low", high="ci_high", digits=1, clip=(-100, 100)):
        n = r.get("pairs", r.get("n_seeds"))
        return interval_text(_num(r["mean_diff" if "mean_diff" in r else "mean"]), _num(r[low]), _num(r[high]),
                             None if n is None else int(n), digits, clip, signed=True)  # fmt: skip

    lines = ["| images | blocks | robust minus natural, accuracy points [95% CI] | seeds |", "|---|---|---|---|"]
    lines += [f"| {r['n_train']} | {r['blocks']} | {interval(r)} | {r['pairs']} |" for r in report["tables"]["paired"]]
    study = report["influence"]["study"]
    lines += ["", f"| influence cut-off | top-1 class match, robust minus natural [95% CI], {len(study['seeds'])} seeds, "
              f"{study['cell']['size']} images |", "|---|---|"]  # fmt: skip
    lines += [f"| {r['setting']} | {interval(r, 'low', 'high', 3, (-1, 1))} |" for r in study["differences"]
              if r["statistic"] == "top1"]  # fmt: skip
    validation = report["influence"]["validation"]
    lines += [
        "",
        "| leave-one-out check (seed 0) | " + " | ".join(validation) + " |",
        "|---|" + "---|" * len(validation),
    ]
    settings = [s["setting"] for s in next(iter(validation.values()))["settings"]]
    for i, setting in enumerate(settings):
        cells = " | ".join(f"Pearson {v['settings'][i]['pearson']:.3f}" for v in validation.values())
        lines.append(f"| {setting} | {cells} |")
    if report.get("methods"):
        from study.demo.methods import lds_text, method_rows, studies_of, validated

        met = report["methods"]
        ceiling = (met["lds"].get("reliability") or {}).get("ceiling")
        lines += ["", f"| influence | setting | LDS [95% CI], {met['lds_source']}, {met['lds']['subsets']} subsets x "
                      f"{met['lds'].get('repeats', 1)} | top-10 overlap with the exact result | top-1 class match, "
                      "robust minus natural [95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
        rows = method_rows(study, studies_of(met), met["lds"], met.get("ensembled"), met.get("labels"))
        for r in rows:
            lds = lds_text(r) if r["LDS"] is not None else "-"
            exact = "-" if r.get("exact top-10") is None else f"{r['exact top-10']:.2f}"
            match = interval_text(r["robust minus natural, top-1"], r["low"], r["high"], r["n_seeds"], 3, (-1, 1),
                                  signed=True)  # fmt: skip
            lines.append(f"| {r['influence']} | {r['setting']} | {lds} | {exact} | {match} |")
        if ceiling is not None:
            lines += ["", f"The LDS ground truth's ceiling (what a perfect attribution could reach): {ceiling:.3f}."]
        if met.get("exact"):
            lines.append(f"Exact results: the head's, {met['exact']['head']}; the block's, {met['exact']['block']}.")
        if met.get("ensembled"):
            lines.append(f"Validated attribution: {validated(rows, met['ensembled'], met.get('labels'))}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict, root: Path) -> Path:
    """Write ``root/report.html`` and ``root/summary.md``; return the page's path."""
    path = Path(root) / "report.html"
    atomic_write_text(Path(root) / "summary.md", markdown_summary(report))
    atomic_write_text(path, render(report, Path(root)))
    return path

"""The linear datamodeling score (LDS) of influence matrices against the run's retrained fine-tunes.

An influence matrix ``I`` (negative = helpful) predicts, to first order, a loss that grows with ``sum_{j in S_m}
I[i, j]`` for a training subset ``S_m``; the score of test image ``i`` is the Spearman correlation, over the ``M``
subsets of the ground truth (:mod:`study.attribution.ground_truth`), of that sum with the measured output (the loss,
or minus TRAK's margin), and the LDS is its mean over the test images, with a 95% bootstrap interval over them (Park
et al. 2023, TRAK; dattri's ``lds`` is the same number on the same arrays). Every LDS is read beside the ground
truth's ceiling (the correlation a perfect attribution could reach with outputs this noisy), and two attributions are
compared by their per-test-image difference, with a bootstrap interval over test images *and* subsets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from interp import bootstrap_interval
from study.attribution.ground_truth import build, reliability, spearman_columns
from study.attribution.inputs import identity_mismatch, run_identity
from study.attribution.retraining import TARGETS, target_sign
from study.attribution.store import InfluenceDir
from study.sweeps.executors import Executor
from transfer.errors import UserError

PAIRED_BOOTSTRAPS = 1000


def predictions(influence: np.ndarray, chosen: list[np.ndarray], sign: float = 1.0) -> np.ndarray:
    """``sign * sum_{j in S_m} I[i, j]``, ``(M, n_test)``."""
    masks = np.zeros((len(chosen), influence.shape[1]))
    for k, positions in enumerate(chosen):
        masks[k, positions] = 1.0
    return sign * (masks @ np.asarray(influence, dtype=np.float64).T)


def score(influence: np.ndarray, chosen: list[np.ndarray], actual: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Per test image: Spearman over subsets of ``sign * sum_{j in S_m} I[i, j]`` with ``actual[m, i]`` (NaN where
    either side is constant); and the predictions ``(M, n_test)``."""
    predicted = predictions(influence, chosen, sign)
    return spearman_columns(predicted, actual), predicted


def paired_difference(pred_a: np.ndarray, pred_b: np.ndarray, actual: np.ndarray, n_boot: int = PAIRED_BOOTSTRAPS,
                      seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """``LDS(a) - LDS(b)`` on the same ground truth, with a 95% bootstrap interval that resamples the subsets *and*
    the test images (the per-image Spearman is recomputed on each resample of subsets): ``(difference, low, high)``.
    ``pred_*`` and ``actual`` are ``(M, Q)``."""
    diff = spearman_columns(pred_a, actual) - spearman_columns(pred_b, actual)
    rng = np.random.default_rng(seed)
    m, q = actual.shape
    boots = []
    for _ in range(n_boot):
        rows, cols = rng.integers(0, m, m), rng.integers(0, q, q)
        a, b, y = pred_a[np.ix_(rows, cols)], pred_b[np.ix_(rows, cols)], actual[np.ix_(rows, cols)]
        d = spearman_columns(a, y) - spearman_columns(b, y)
        if np.isfinite(d).any():
            boots.append(float(np.nanmean(d)))
    low, high = (np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan))
    return float(np.nanmean(diff)), float(low), float(high)


def read_influence_of(run: Path, influence_dirs: list[Path]) -> list:
    """The influence directories, read, each checked to have been computed from ``run``: from its path, and from the
    run now there (not an earlier one deleted and made again at the same path: :func:`identity_mismatch`)."""
    results = [InfluenceDir(d).read() for d in influence_dirs]
    now = run_identity(run)
    for d, res in zip(influence_dirs, results, strict=True):
        if Path(res.meta["config"]["run"]).resolve() != run.resolve():
            raise UserError(f"{d} was computed from {res.meta['config']['run']}, not from {run}")
        why = identity_mismatch(res.meta, res["idx_train"], run, now)
        if why:
            raise UserError(f"{d} was computed from an earlier run at {run} ({why}); compute it again: "
                            f"robust-transfer influence --run {run} --out {d}")  # fmt: skip
    return results


AGREEMENT_K = 10  # the top-k of the agreement with the exact result (as in benchmarks/influence_methods.py)


def exact_references(exact: list) -> list[tuple[str, float, object, dict]]:
    """``(parameter selection, damping, result, setting)`` of each directory taken as the exact result (read by
    :func:`read_influence_of`): its setting labelled ``exact`` (``rcond_name``), else its only one."""
    refs = []
    for res in exact:
        named = [st for st in res.settings if st.get("rcond_name") == "exact"]
        chosen = named[:1] or (res.settings if len(res.settings) == 1 else [])
        if not chosen:
            raise UserError(f"--exact {res.root}: it has {len(res.settings)} settings and none labelled exact; give "
                            "a directory of one setting (e.g. influence --method ggn) or one with --rcond exact")  # fmt: skip
        st = chosen[0]
        refs.append((_selection(res.meta), float(st.get("damping") or 0.0), res, st))
    return refs


def agreement(res, st: dict, refs: list, ensemble: int) -> dict | None:
    """The setting's agreement with the exact result of the same parameters and damping (``refs``: from
    :func:`exact_references`) on their common test images: :func:`interp.ranking_agreement`'s top-k overlap and
    per-row Spearman, and which reference. ``None`` when no reference matches, and for an ensemble (an average over
    models has no single exact counterpart; its first model's own agreement is that of the single-model directory)."""
    from interp import ranking_agreement

    if ensemble > 1:
        return None
    damping = float(st.get("damping") or 0.0)
    for selection, ref_damping, ref, ref_st in refs:
        if selection != _selection(res.meta) or not np.isclose(damping, ref_damping, rtol=1e-9, atol=0.0):
            continue
        mine, theirs = np.asarray(res["idx_test"]), np.asarray(ref["idx_test"])
        common, a, b = np.intersect1d(mine, theirs, return_indices=True)
        if not len(common) or not np.array_equal(np.asarray(res["idx_train"]), np.asarray(ref["idx_train"])):
            continue
        approx, exact = np.asarray(res.setting(st["index"])[0])[a], np.asarray(ref.setting(ref_st["index"])[0])[b]
        agree = ranking_agreement(approx, exact, k=min(AGREEMENT_K, approx.shape[1]))
        return {"top_k_overlap": agree["top_k_overlap"], "spearman": agree["spearman"], "k": agree["k"],
                "n_test": int(len(common)), "versus": f"{ref.root}: {ref_st.get('label', '')}"}  # fmt: skip
    return None


def lds_report(run: Path, results: list, out: Path, m: int, repeats: int, target: str, fraction: float, seed: int,
               device: str, data_root: str | None, executor: Callable[[], Executor],
               progress: bool, exact: list | None = None) -> tuple[dict, dict]:  # fmt: skip
    """The ground truth (``m`` subsets x ``repeats``, on ``executor()``, saved under ``out/ground_truth``), and
    every setting of every influence directory of ``run`` (``results``: from :func:`read_influence_of`) scored
    against it by ``target``, beside its ceiling, and paired against the first; with ``exact`` (directories read the
    same way), each setting's agreement with the exact result of its parameters and damping (:func:`agreement`).
    Returns the report and the figure's data."""
    refs = exact_references(exact or [])
    if target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}")
    idx_test = np.unique(np.concatenate([np.asarray(res["idx_test"]) for res in results]))
    truth = build(run, out / "runs", m, repeats, fraction, seed, idx_test, device, data_root, executor, progress)
    whole = reliability(truth.outputs(target))
    truth.save(out / "ground_truth", target, {"reliability": whole, "run": str(run)})
    rows, scatter, reference = [], {}, None
    for res in results:
        part = truth.columns(np.asarray(res["idx_test"]))
        actual, other = part.targets(target), part.targets(_other(target))
        ceiling = reliability(part.outputs(target))
        for st in res.settings:
            inf, _ = res.setting(st["index"])
            per, predicted = score(inf, part.chosen, actual, target_sign(target))
            per_other, _ = score(inf, part.chosen, other, target_sign(_other(target)))
            row = _row(res, st, per, per_other, ceiling, target)
            if refs:
                row["agreement"] = agreement(res, st, refs, row["ensemble"])
            if reference is None:
                reference = (row, predicted, part.test_indices)
            elif np.array_equal(part.test_indices, reference[2]):  # paired: the same test images
                d, lo, hi = paired_difference(predicted, reference[1], actual)
                row["paired"] = {"versus": f"{reference[0]['influence']}: {reference[0]['setting']}",
                                 "difference": d, "interval": [lo, hi]}  # fmt: skip
            rows.append(row)
            label = f"{Path(res.root).name}: {row['method']}, {st.get('label', '')}".rstrip(", ")
            scatter[f"{label}\nLDS {row['lds']:+.3f} [{row['interval'][0]:+.3f}, {row['interval'][1]:+.3f}]"] = (
                predicted, actual)  # fmt: skip
    report = {"subsets": m, "repeats": repeats, "target": target, "target_meaning": TARGETS[target],
              "fraction": fraction, "seed": seed, "subset_size": int(len(truth.chosen[0])), "n_train": truth.n_train,
              "seeds": truth.seeds, "reliability": whole, "ground_truth": str(out / "ground_truth"),
              "definition": " ".join(__doc__.split("\n\n")[1].split()), "scores": rows}  # fmt: skip
    return report, scatter


def write_lds_csv(path: Path, report: dict) -> None:
    """``lds.csv``: a row per scored setting (its LDS and interval, the ceiling, the other target's LDS, the paired
    difference against the first, and the agreement with the exact result where ``--exact`` gave one)."""
    from transfer.files import atomic_write_csv

    other = _other(report["target"])
    header = ["influence", "method", "setting", "params", "ensemble", "target", "lds", "low", "high", "ceiling",
              "lds_over_ceiling", f"lds_{other}", "paired_versus", "paired_difference", "paired_low", "paired_high",
              "n_test", "exact_top10_overlap", "exact_spearman"]  # fmt: skip
    rows = []
    for r in report["scores"]:
        paired = r.get("paired")
        agree = r.get("agreement")
        rows.append([r["influence"], r["method"], r["setting"], r["params"], r["ensemble"], r["target"], r["lds"],
                     *r["interval"], r["ceiling"], r["lds_over_ceiling"], r[f"lds_{other}"],
                     *([paired["versus"], paired["difference"], *paired["interval"]] if paired else ["", "", "", ""]),
                     r["n_test"], *((agree["top_k_overlap"], agree["spearman"]) if agree else ("", ""))])  # fmt: skip
    atomic_write_csv(path, header, rows)


def _other(target: str) -> str:
    return "margin" if target == "loss" else "loss"


def _row(res, st: dict, per: np.ndarray, per_other: np.ndarray, ceiling: dict | None, target: str) -> dict:
    ok = per[np.isfinite(per)]
    lds = float(np.mean(ok)) if len(ok) else float("nan")
    iv = bootstrap_interval(ok) if len(ok) > 1 else (float("nan"), float("nan"))
    ensemble = res.meta.get("ensemble", {}).get("models", 1)
    return {"influence": str(res.root), "method": res.meta.get("inverse", {}).get("method", "?"),
            "setting": st.get("label"), "params": _selection(res.meta), "ensemble": ensemble, "target": target,
            "lds": lds, "interval": list(iv), f"lds_{_other(target)}": float(np.nanmean(per_other)),
            "ceiling": ceiling["ceiling"] if ceiling else None,
            "lds_over_ceiling": lds / ceiling["ceiling"] if ceiling and ceiling["ceiling"] > 0 else None,
            "n_test": int(len(ok))}  # fmt: skip


def _selection(meta: dict) -> str:
    """What an influence directory differentiated: ``head`` or ``trainable``/paths as asked, with the count."""
    asked = meta.get("config", {}).get("params", "fc")
    return "head" if asked in ("fc", "head") else f"{asked} ({len(meta.get('params', []))} tensors)"


def lds_figure(scatter: dict, target: str = "loss"):
    """Predicted sum against the retrained output, each test image standardised, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scatter), figsize=(4.2 * len(scatter), 4), squeeze=False)
    for ax, (label, (pred, actual)) in zip(axes[0], scatter.items(), strict=True):
        z = lambda a: (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), 1.0)  # noqa: E731
        ax.scatter(z(pred).ravel(), z(actual).ravel(), s=4, alpha=0.4)
        ax.set_xlabel("sum of I over the subset (z per test image)", fontsize=8)
        ax.set_ylabel(f"retrained test {target}, averaged over repeats (z per test image)", fontsize=8)
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return fig


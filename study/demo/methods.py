"""The demo's methods stage: influence over the fine-tuned block (EK-FAC; Arnoldi too in the full demo) beside
the head, each with its LDS.

Runs ordinary commands: per method of the scale, ``influence-study`` of the same cell as the influence stage
with ``--params trainable --method M --damping wd`` (the unfrozen block and the head), then
``validate-influence --lds`` on the robust source's seed-0 run, scoring the head's directory (every cut-off
of the influence stage) and each method's. The report shows, per method and setting, robust minus natural
top-1 class match over seeds beside that attribution's linear datamodeling score, so the validation is
read before the class-match rate.
"""

from __future__ import annotations

import json

from study.sweeps.summary import interval_text

LDS_STAT = "top1"
LABELS = {"ekfac": "EK-FAC, trainable", "arnoldi": "Arnoldi (r = 200), trainable"}  # the demo's methods


def methods_stage(demo, scale, device: str, natural: str, robust: str, seed0: int) -> dict:
    from study.attribution.over_seeds import cell_runs
    from study.sweeps.coordinator import SweepDir

    sweep, out = demo.root / "sweep", demo.root / "methods"
    size = str(scale.influence_size)
    for method in scale.methods:
        demo.run("methods", "influence-study", sweep, "--size", size, "--blocks", "1", "--params", "trainable",
                 "--method", method, "--damping", "wd", "--test", scale.test, "--k", 50, "--out", out / method,
                 "--device", device, "--no-progress")  # fmt: skip
    with SweepDir(sweep).open_ledger() as ledger:
        _, runs = cell_runs(ledger.rows("done"), sweep, "digits", "1", size)
    dirs = [demo.root / "influence" / robust / f"s{seed0}"] + [out / m / robust / f"s{seed0}" for m in scale.methods]
    demo.run("methods", "validate-influence", "--run", runs[robust][seed0], "--out", out / "lds", "--lds", scale.lds,
             "--tests", 2, "--removals", 3, "--random", 2, "--influence", ",".join(map(str, dirs)), "--device",
             device)  # fmt: skip
    studies = {m: json.loads((out / m / "study.json").read_text()) for m in scale.methods}
    lds = json.loads((out / "lds" / "validate.json").read_text())["lds"]
    return {
        "studies": {m: {k: st[k] for k in ("cell", "settings", "differences", "reading")} for m, st in studies.items()},
        "lds": {k: lds[k] for k in ("subsets", "subset_size", "n_train", "scores")},
        "lds_source": f"{robust}, seed {seed0}",
        "figures": [str(p.relative_to(demo.root))
                    for p in [out / m / "study.png" for m in scale.methods] + [out / "lds" / "lds.png"]],
    }  # fmt: skip


def studies_of(methods_stage_result: dict) -> dict[str, dict]:
    """The methods' studies by name (a stage recorded before Arnoldi was added held EK-FAC's alone)."""
    return methods_stage_result.get("studies") or {"ekfac": methods_stage_result["study"]}


def method_rows(head_study: dict, studies: dict[str, dict], lds: dict) -> list[dict]:
    """Per method and setting: robust minus natural top-1 class match over seeds, and that attribution's LDS
    (``studies``: the methods' influence studies by method name)."""
    scores = {(r["method"] if r["method"] in studies else "head", r["setting"]): r for r in lds["scores"]}
    rows = []
    for key, name, study in [("head", "head (closed form)", head_study)] + [
            (m, LABELS.get(m, f"{m}, trainable"), st) for m, st in studies.items()]:  # fmt: skip
        for d in study["differences"]:
            if d["statistic"] != LDS_STAT:
                continue
            s = scores.get((key, d["setting"]))
            rows.append({
                "influence": name, "setting": d["setting"], "robust minus natural, top-1": d["mean"],
                "low": d["low"], "high": d["high"], "n_seeds": d["n_seeds"], "LDS": s["lds"] if s else None,
                "LDS low": s["interval"][0] if s else None, "LDS high": s["interval"][1] if s else None,
            })  # fmt: skip
    return rows


def method_readings(rows: list[dict], lds_source: str) -> list[str]:
    """One sentence per row, the validation first."""
    out = []
    for r in rows:
        lds = (f"LDS {r['LDS']:+.3f} [{r['LDS low']:+.3f}, {r['LDS high']:+.3f}] on {lds_source}"
               if r["LDS"] is not None else "no LDS")  # fmt: skip
        match = interval_text(r["robust minus natural, top-1"], r["low"], r["high"], r["n_seeds"], 3, (-1, 1),
                              signed=True)  # fmt: skip
        out.append(f"{r['influence']}, {r['setting']}: {lds}; robust minus natural top-1 class match {match} "
                   f"over {r['n_seeds']} seeds.")  # fmt: skip
    return out

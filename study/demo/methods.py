"""The demo's methods stage: influence over the fine-tuned block (EK-FAC) beside the head, each with its LDS.

Runs ordinary commands: ``influence-study`` of the same cell as the influence stage with ``--params
trainable --method ekfac --damping wd`` (the unfrozen block and the head, Kronecker-factored), then
``validate-influence --lds`` on the robust source's seed-0 run, scoring the head's directory (every cut-off
of the influence stage) and EK-FAC's. The report shows, per method and setting, robust minus natural
top-1 class match over seeds beside that attribution's linear datamodeling score, so the validation is
read before the class-match rate.
"""

from __future__ import annotations

import json

LDS_STAT = "top1"


def methods_stage(demo, scale, device: str, natural: str, robust: str, seed0: int) -> dict:
    from study.attribution.over_seeds import cell_runs
    from study.sweeps.coordinator import SweepDir

    sweep, out = demo.root / "sweep", demo.root / "methods"
    size = str(scale.influence_size)
    demo.run("methods", "influence-study", sweep, "--size", size, "--blocks", "1", "--params", "trainable", "--method",
             "ekfac", "--damping", "wd", "--test", scale.test, "--k", 50, "--out", out / "ekfac", "--device", device,
             "--no-progress")  # fmt: skip
    with SweepDir(sweep).open_ledger() as ledger:
        _, runs = cell_runs(ledger.rows("done"), sweep, "digits", "1", size)
    head_dir = demo.root / "influence" / robust / f"s{seed0}"
    ekfac_dir = out / "ekfac" / robust / f"s{seed0}"
    demo.run("methods", "validate-influence", "--run", runs[robust][seed0], "--out", out / "lds", "--lds", scale.lds,
             "--tests", 2, "--removals", 3, "--random", 2, "--influence", f"{head_dir},{ekfac_dir}", "--device",
             device)  # fmt: skip
    study = json.loads((out / "ekfac" / "study.json").read_text())
    lds = json.loads((out / "lds" / "validate.json").read_text())["lds"]
    return {
        "study": {k: study[k] for k in ("cell", "settings", "differences", "reading")},
        "lds": {k: lds[k] for k in ("subsets", "subset_size", "n_train", "scores")},
        "lds_source": f"{robust}, seed {seed0}",
        "figures": [str(p.relative_to(demo.root)) for p in (out / "ekfac" / "study.png", out / "lds" / "lds.png")],
    }


def method_rows(head_study: dict, ekfac_study: dict, lds: dict) -> list[dict]:
    """Per method and setting: robust minus natural top-1 class match over seeds, and that attribution's LDS."""
    scores = {(r["method"] == "ekfac", r["setting"]): r for r in lds["scores"]}
    rows = []
    for is_ekfac, name, study in ((False, "head (closed form)", head_study), (True, "EK-FAC, trainable", ekfac_study)):
        for d in study["differences"]:
            if d["statistic"] != LDS_STAT:
                continue
            s = scores.get((is_ekfac, d["setting"]))
            rows.append({
                "influence": name, "setting": d["setting"], "robust minus natural, top-1": d["mean"],
                "low": d["low"], "high": d["high"], "LDS": s["lds"] if s else None,
                "LDS low": s["interval"][0] if s else None, "LDS high": s["interval"][1] if s else None,
            })  # fmt: skip
    return rows


def method_readings(rows: list[dict], lds_source: str) -> list[str]:
    """One sentence per row, the validation first."""
    out = []
    for r in rows:
        lds = (f"LDS {r['LDS']:+.3f} [{r['LDS low']:+.3f}, {r['LDS high']:+.3f}] on {lds_source}"
               if r["LDS"] is not None else "no LDS")  # fmt: skip
        out.append(f"{r['influence']}, {r['setting']}: {lds}; robust minus natural top-1 class match "
                   f"{r['robust minus natural, top-1']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] over seeds.")  # fmt: skip
    return out

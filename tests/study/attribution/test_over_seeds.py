"""study.attribution.over_seeds: influence and class-match over the seeds of a sweep cell, compared with intervals."""

import json

import numpy as np
import pytest
from scipy import stats

from interp.metrics import class_match
from study.attribution.over_seeds import InfluenceStudyConfig, run_influence_study
from study.attribution.store import InfluenceDir
from study.sweeps.coordinator import SweepConfig, run_sweep
from transfer.errors import UserError

GRID = """
sources = ["mnist5k-natural", "mnist5k-l2"]
targets = ["digits"]
blocks = [0]
[seeds]
60 = 2
[finetune]
epochs = 2
augment = "none"
device = "cpu"
save_every = 0
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "grid.toml").write_text(GRID)
    counts = run_sweep(SweepConfig(str(root / "grid.toml"), str(root / "sweep"), workers=1, threads=2), progress=False)
    assert counts["done"] == 4
    return root / "sweep"


def test_the_study_compares_sources_per_seed_with_t_intervals_and_resumes(sweep):
    cfg = InfluenceStudyConfig(sweep=str(sweep), size="60", blocks="0", test="30", rcond="paper,exact", k=5,
                               device="cpu")  # fmt: skip
    report = run_influence_study(cfg, progress=False)
    out = sweep / "influence" / "digits" / "b0" / "n60"
    assert report["natural"] == "mnist5k-natural" and report["robust"] == ["mnist5k-l2"]
    assert report["seeds"] == [20000000, 20100000]
    assert report["settings"] == ["rcond=paper damping=0", "rcond=exact damping=0"]
    # each per-seed rate is class-match of that run's own influence directory
    for seed in report["seeds"]:
        for source in ("mnist5k-natural", "mnist5k-l2"):
            res = InfluenceDir(out / source / f"s{seed}").read()
            direct = class_match(np.asarray(res["influence_test"]), res["y_test"], res["y_train"], k=5).per_rank[0]
            row = next(r for r in report["rates"] if r["source"] == source and r["statistic"] == "top1"
                       and r["setting"] == "rcond=paper damping=0")  # fmt: skip
            assert row["per_seed"][report["seeds"].index(seed)] == pytest.approx(direct)
    for d in report["differences"]:
        nat = next(r for r in report["rates"] if r["source"] == "mnist5k-natural" and r["setting"] == d["setting"]
                   and r["statistic"] == d["statistic"])  # fmt: skip
        rob = next(r for r in report["rates"] if r["source"] == "mnist5k-l2" and r["setting"] == d["setting"]
                   and r["statistic"] == d["statistic"])  # fmt: skip
        per_seed = np.subtract(rob["per_seed"], nat["per_seed"])
        assert d["per_seed"] == pytest.approx(per_seed.tolist())
        half = stats.t.ppf(0.975, 1) * per_seed.std(ddof=1) / np.sqrt(2)
        assert d["mean"] == pytest.approx(per_seed.mean())
        if half > 0:
            assert (d["low"], d["high"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert len(report["reading"]) == 2 and "mnist5k-l2 minus mnist5k-natural" in report["reading"][0]
    assert json.loads((out / "study.json").read_text())["differences"] == report["differences"]
    assert (out / "study.csv").read_text().count("\n") == 1 + len(report["rates"]) + len(report["differences"])
    assert (out / "study.png").stat().st_size > 0
    # resumed: complete directories with the same settings are not recomputed; new settings are
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/s*/meta.json")}
    assert len(stamps) == 4
    run_influence_study(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    InfluenceDir(out / "mnist5k-l2" / "s20000000").meta.unlink()  # as if killed mid-write
    run_influence_study(cfg, progress=False)
    assert (out / "mnist5k-l2" / "s20000000" / "meta.json").exists()


def test_a_cell_the_sweep_does_not_hold_is_a_clear_error(sweep):
    with pytest.raises(UserError, match="no finished run in the sweep for target digits, blocks 1, size 60"):
        run_influence_study(InfluenceStudyConfig(sweep=str(sweep), size="60", blocks="1", device="cpu"), progress=False)
    with pytest.raises(UserError, match="--size"):
        InfluenceStudyConfig(sweep=str(sweep), size="sixty")


def test_the_study_runs_per_method_beside_the_default(sweep):
    """--method ekfac over the trainable parameters (the head of a 0-block run): its own directory, its method
    in every influence directory it wrote, damping required."""
    with pytest.raises(UserError, match="--damping > 0"):
        InfluenceStudyConfig(sweep=str(sweep), size="60", blocks="0", method="ekfac")
    cfg = InfluenceStudyConfig(sweep=str(sweep), size="60", blocks="0", test="20", k=5, params="trainable",
                               method="ekfac", damping="wd", device="cpu")  # fmt: skip
    report = run_influence_study(cfg, progress=False)
    out = sweep / "influence" / "digits" / "b0" / "n60-trainable-ekfac"
    assert (out / "study.json").exists() and report["settings"] == ["damping=0.0005"]
    for meta in out.glob("*/s*/meta.json"):
        assert json.loads(meta.read_text())["inverse"]["method"] == "ekfac"

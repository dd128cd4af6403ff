"""The linear datamodeling score: subsets, the score itself, retraining through finetune, the report."""

import json

import numpy as np
import pytest

from study.attribution.ground_truth import subsets
from study.attribution.lds import score
from study.attribution.leave_one_out import ValidateConfig, validate_influence
from transfer.errors import UserError


def test_score_is_the_rank_correlation_of_the_summed_influence_with_the_outcome():
    rng = np.random.default_rng(0)
    inf = rng.normal(size=(4, 30))
    chosen = subsets(np.arange(30) % 3, 8, 0.5, seed=1)
    masks = np.zeros((8, 30))
    for k, c in enumerate(chosen):
        masks[k, c] = 1
    pred = masks @ inf.T
    per, predicted = score(inf, chosen, np.exp(pred))  # any increasing function of the prediction
    np.testing.assert_allclose(per, 1.0)
    np.testing.assert_allclose(predicted, pred)
    per, _ = score(inf, chosen, -pred)
    np.testing.assert_allclose(per, -1.0)
    per, _ = score(inf, chosen, np.exp(pred), sign=-1.0)  # the margin's sign
    np.testing.assert_allclose(per, -1.0)
    const = np.ones((8, 4))
    assert np.isnan(score(inf, chosen, const)[0]).all()  # nothing to rank


def test_subsets_are_class_covering_seeded_and_of_the_asked_size():
    labels = np.repeat(np.arange(5), 8)
    a, b = subsets(labels, 6, 0.5, seed=3), subsets(labels, 6, 0.5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(len(x) == 20 and set(labels[x]) == set(range(5)) for x in a)
    assert len({tuple(x) for x in a}) == 6


def test_finetune_on_given_indices_records_them(tmp_path):
    from transfer.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(source="mnist5k-l2", target="digits", blocks="0", subset="12", epochs="1", augment="none",
                         device="cpu")  # fmt: skip
    idx = np.arange(0, 120, 10)
    finetune(cfg, tmp_path / "r", progress=False, indices=idx)
    assert json.loads((tmp_path / "r" / "subset.json").read_text())["indices"] == idx.tolist()
    with pytest.raises(UserError, match="settings differ"):
        finetune(cfg, tmp_path / "r", resume=True, progress=False, indices=idx + 1)
    with pytest.raises(UserError, match="indices"):
        finetune(cfg, tmp_path / "bad", progress=False, indices=np.array([-1]))


def test_validate_influence_reports_lds_for_named_influence_directories(finished_run, influence_out, tmp_path):
    with pytest.raises(UserError, match="--lds"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=3)
    with pytest.raises(UserError, match="--lds, --retrain or --pbrf"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), influence=str(influence_out))
    with pytest.raises(UserError, match="--retrain-workers is for --executor local"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=5, executor="inline", retrain_workers=2)
    with pytest.raises(UserError, match="--executor must be one of inline, local, ray"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=5, executor="slurm")
    with pytest.raises(UserError, match="--address is for --executor ray"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=5, address="localhost:6379")
    # the retrainings run in two local worker processes (the default executor)
    cfg = ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), tests=2, removals=3, random=2, lds=5,
                         influence=str(influence_out), test="30", retrain_workers=2, threads=1)  # fmt: skip
    report = validate_influence(cfg, progress=False)
    lds = report["lds"]
    assert lds["subsets"] == 5 and lds["subset_size"] == 40 and lds["n_train"] == 80
    (row,) = lds["scores"]
    assert -1 <= row["lds"] <= 1 and row["interval"][0] <= row["lds"] <= row["interval"][1]
    assert row["n_test"] > 0 and row["influence"] == str(influence_out)
    for name in ("lds.csv", "lds.png", "validate.json"):
        assert (tmp_path / "v" / name).exists()
    runs = sorted((tmp_path / "v" / "lds" / "runs").iterdir())
    assert len(runs) == 5 and all((r / "summary.json").exists() for r in runs)
    before = [(r / "summary.json").stat().st_mtime_ns for r in runs]
    again = validate_influence(cfg, progress=False)  # finished retrainings are kept, not redone
    assert [(r / "summary.json").stat().st_mtime_ns for r in runs] == before
    assert again["lds"]["scores"][0]["lds"] == pytest.approx(row["lds"])


def test_an_influence_directory_of_an_earlier_run_at_the_same_path_is_refused(tmp_path):
    import shutil

    from study.attribution import InfluenceConfig, run_influence
    from study.attribution.inputs import identity_mismatch
    from study.attribution.lds import read_influence_of
    from study.attribution.store import InfluenceDir
    from transfer.finetune import FinetuneConfig, finetune

    run = tmp_path / "run"

    def make(subset: str) -> None:
        finetune(FinetuneConfig(source="mnist5k-l2", target="digits", blocks="0", subset=subset, epochs="1",
                                augment="none", device="cpu"), run, progress=False)  # fmt: skip

    make("40")
    inf = tmp_path / "inf"
    run_influence(InfluenceConfig(run=str(run), out=str(inf), test="10", device="cpu"), progress=False)
    res = InfluenceDir(inf).read()
    assert identity_mismatch(res.meta, res["idx_train"], run) is None
    assert read_influence_of(run, [inf])[0].meta["run_identity"]["model_sha256"]
    shutil.rmtree(run)
    make("30")  # another run at the same path: fewer images, another model
    with pytest.raises(UserError, match="computed from an earlier run"):
        read_influence_of(run, [inf])
    cfg = ValidateConfig(run=str(run), out=str(tmp_path / "v"), lds=5, influence=str(inf), executor="inline",
                         device="cpu")  # fmt: skip
    with pytest.raises(UserError, match="earlier run"):
        validate_influence(cfg, progress=False)
    assert not (tmp_path / "v" / "lds" / "runs").exists()  # refused before any retraining
    # a directory written before identities were recorded is matched by the run's settings and images
    meta = dict(res.meta)
    meta.pop("run_identity")
    assert identity_mismatch(meta, res["idx_train"], run) is not None


def test_lds_and_workers_are_bounded(finished_run, tmp_path):
    from study.sweeps.executors import MAX_WORKERS

    with pytest.raises(UserError, match="--lds must be an integer in"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=100_000_000)
    with pytest.raises(UserError, match="--retrain-workers must be an integer in"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=5, retrain_workers=MAX_WORKERS + 1)


def test_the_retrainings_run_where_the_runtime_default_puts_them(finished_run, tmp_path):
    """--device defaults to auto (a GPU where there is one) for features, influence and retrainings; only the
    head's refits move to the CPU, whatever the device."""
    assert ValidateConfig(run=str(finished_run), out=str(tmp_path / "v")).device == "auto"


def test_the_lds_alone_with_each_setting_agreement_with_the_exact_result(finished_run, influence_out, tmp_path):
    import csv

    from interp import ranking_agreement
    from study.attribution import InfluenceConfig, run_influence
    from study.attribution.store import InfluenceDir

    with pytest.raises(UserError, match="--tests 0"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), tests=0)
    with pytest.raises(UserError, match="--exact"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), exact=str(influence_out))
    both = tmp_path / "both"
    run_influence(InfluenceConfig(run=str(finished_run), out=str(both), rcond="paper,exact", test="30", device="cpu"),
                  progress=False)  # fmt: skip
    cut = tmp_path / "cut"  # two settings, neither exact: no reference to take
    run_influence(InfluenceConfig(run=str(finished_run), out=str(cut), rcond="paper,1e-3", test="30", device="cpu"),
                  progress=False)  # fmt: skip
    cfg = ValidateConfig(run=str(finished_run), out=str(tmp_path / "bad"), tests=0, lds=5, executor="inline",
                         influence=str(both), exact=str(cut), device="cpu")  # fmt: skip
    with pytest.raises(UserError, match="none labelled exact"):
        validate_influence(cfg, progress=False)
    assert not (tmp_path / "bad" / "lds").exists()  # refused before any retraining
    out = tmp_path / "v"
    cfg = ValidateConfig(run=str(finished_run), out=str(out), tests=0, lds=5, executor="inline", influence=str(both),
                         exact=str(both), device="cpu")  # fmt: skip
    report = validate_influence(cfg, progress=False)
    assert report["settings"] == [] and "refit" not in report
    assert not (out / "validate.csv").exists() and not (out / "validate.png").exists()
    paper, exact = report["lds"]["scores"]
    assert exact["agreement"]["top_k_overlap"] == 1.0 and exact["agreement"]["spearman"] == pytest.approx(1.0)
    res = InfluenceDir(both).read()
    direct = ranking_agreement(np.asarray(res.setting(0)[0]), np.asarray(res.setting(1)[0]), k=10)
    assert paper["agreement"]["top_k_overlap"] == pytest.approx(direct["top_k_overlap"])
    assert paper["agreement"]["spearman"] == pytest.approx(direct["spearman"])
    assert paper["agreement"]["versus"].endswith("rcond=exact damping=0")
    with open(out / "lds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["exact_top10_overlap"]) for r in rows] == [paper["agreement"]["top_k_overlap"], 1.0]


def test_retrainings_are_tested_after_their_last_epoch_and_earlier_ones_resume_as_recorded(finished_run, tmp_path):
    """A retraining evaluates once, at its end (its final model is what is scored); a directory that an earlier
    version started with its own --eval-every keeps it, so the same command resumes it instead of refusing it."""
    from study.attribution.retraining import Retraining, retraining_jobs
    from transfer.runs import RunDir

    [(spec, run_dir)] = retraining_jobs(finished_run, tmp_path, [Retraining("a", np.arange(40))], "cpu")
    assert spec.settings["eval_every"] == "last"
    earlier = dict(spec.settings, eval_every=spec.settings["epochs"])
    RunDir(run_dir).open(earlier, resume=False)  # what an earlier version left: config.json alone
    [(again, _)] = retraining_jobs(finished_run, tmp_path, [Retraining("a", np.arange(40))], "cpu")
    assert again.settings["eval_every"] == spec.settings["epochs"]

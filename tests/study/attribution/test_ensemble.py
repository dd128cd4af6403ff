"""influence --ensemble K: the run's fine-tune repeated with other seeds, each model's influence, their mean."""

import json

import numpy as np
import pytest

from study.attribution import InfluenceConfig, run_influence
from study.attribution.ensemble import ensemble_seeds
from study.attribution.leave_one_out import ValidateConfig
from study.attribution.store import InfluenceDir
from transfer.errors import UserError
from transfer.runs import RunDir


def test_ensemble_is_the_mean_of_its_models_and_resumes(finished_run, influence_out, tmp_path):
    out = tmp_path / "ens"
    cfg = InfluenceConfig(run=str(finished_run), out=str(out), test="30", device="cpu", ensemble=2, executor="inline",
                          rcond="paper,exact")  # fmt: skip
    meta = run_influence(cfg, progress=False)
    seed = int(RunDir(finished_run).recorded()["seed"])
    assert meta["ensemble"]["models"] == 2 and meta["ensemble"]["seeds"] == ensemble_seeds(seed, 2) == [seed, seed + 1]
    other = out / "ensemble" / "runs" / "k01"
    assert int(RunDir(other).recorded()["seed"]) == seed + 1
    assert json.loads((other / "subset.json").read_text())["indices"] == json.loads(
        (finished_run / "subset.json").read_text())["indices"]  # fmt: skip
    result = InfluenceDir(out).read()
    members = [InfluenceDir(p).read() for p in meta["ensemble"]["members"]]
    for i in range(2):  # every setting averaged
        for which in range(2):
            mean = (np.asarray(members[0].setting(i)[which]) + np.asarray(members[1].setting(i)[which])) / 2
            np.testing.assert_allclose(result.setting(i)[which], mean, rtol=0, atol=0)
    # the two models differ (another seed), and the run's own member is the run's plain influence
    assert not np.allclose(members[0]["influence_test"], members[1]["influence_test"])
    np.testing.assert_array_equal(members[0]["influence_test"], InfluenceDir(influence_out).read()["influence_test"])
    assert result.meta["config"]["ensemble"] == 2
    # a second call keeps the fine-tune and the members
    stamp = (other / "model.pt").stat().st_mtime_ns, (out / "ensemble" / "influence" / "k01" / "meta.json").stat()
    run_influence(cfg, progress=False)
    assert (other / "model.pt").stat().st_mtime_ns == stamp[0]
    assert (out / "ensemble" / "influence" / "k01" / "meta.json").stat().st_mtime_ns == stamp[1].st_mtime_ns
    np.testing.assert_array_equal(InfluenceDir(out).read()["influence_test"], result["influence_test"])


def test_ensemble_settings_are_checked(finished_run, influence_out, tmp_path):
    with pytest.raises(UserError, match="--ensemble"):
        InfluenceConfig(run=str(finished_run), out=str(tmp_path / "x"), ensemble=0)
    with pytest.raises(UserError, match="--retrain-workers is for --executor local"):
        InfluenceConfig(run=str(finished_run), out=str(tmp_path / "x"), ensemble=2, executor="inline",
                        retrain_workers=2)  # fmt: skip
    with pytest.raises(UserError, match="--ensemble is for the influence computed here"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), lds=5, influence=str(influence_out), ensemble=2)


def test_members_trained_up_front_for_several_runs_are_what_each_ensemble_uses(finished_run, tmp_path, monkeypatch):
    from study.attribution.ensemble import fine_tune_members, member_jobs

    cfgs = [InfluenceConfig(run=str(finished_run), out=str(tmp_path / name), test="30", device="cpu", ensemble=3,
                            executor="inline") for name in ("a", "b")]  # fmt: skip
    jobs = [member_jobs(c) for c in cfgs]
    assert [[p.name for _, p in j] for j in jobs] == [["k01", "k02"]] * 2
    assert len({spec.key for j in jobs for spec, _ in j}) == 4  # keyed by directory: unique across the runs
    fine_tune_members(cfgs, progress=False)  # the four fine-tunes on one executor
    assert all((p / "summary.json").exists() for j in jobs for _, p in j)
    stamps = [(p / "model.pt").stat().st_mtime_ns for j in jobs for _, p in j]

    class NoWorker:  # any run submitted to an executor now would be a run trained twice
        slots, description = 1, "none"

        def submit(self, spec, run_dir):
            raise AssertionError(f"{run_dir} was trained again")

        def wait(self, timeout):
            return []

        def shutdown(self):
            pass

    for c in cfgs:
        monkeypatch.setattr(c, "retrain_executor", lambda: NoWorker())
        meta = run_influence(c, progress=False)
        assert meta["ensemble"]["runs"][1:] == [str(p) for _, p in member_jobs(c)]
    assert [(p / "model.pt").stat().st_mtime_ns for j in jobs for _, p in j] == stamps

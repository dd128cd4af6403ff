"""Fine-tunes run to completion on an executor without a ledger (the retrainings of LDS and leave-one-out)."""

import json
from pathlib import Path

import numpy as np
import pytest

from study.sweeps.engines import make_executor
from study.sweeps.executors import Executor, InlineExecutor, Outcome
from study.sweeps.grid import RunSpec
from study.sweeps.jobs import run_jobs
from transfer.errors import UserError

SETTINGS = {"source": "mnist5k-l2", "target": "digits", "blocks": "0", "subset": "12", "epochs": "1",
            "augment": "none", "device": "cpu"}  # fmt: skip


class Dying(Executor):
    """Loses each run's worker ``deaths[key]`` times before answering; fails keys containing ``bad``."""

    def __init__(self, deaths: dict[str, int]):
        self.slots, self.description, self.deaths = 2, "dying", dict(deaths)
        self.submitted: list[str] = []
        self._pending: list[str] = []
        self.closed = False

    def submit(self, spec, run_dir):
        self.submitted.append(spec.key)
        self._pending.append(spec.key)

    def wait(self, timeout):
        out, self._pending = self._pending, []
        answers = []
        for k in out:
            if self.deaths.get(k, 0) > 0:
                self.deaths[k] -= 1
                answers.append(Outcome(k, None, "worker died", lost=True))
            elif "bad" in k:
                answers.append(Outcome(k, None, "UserError: no such thing"))
            else:
                answers.append(Outcome(k, {"key": k}, None))
        return answers

    def shutdown(self):
        self.closed = True


def _jobs(keys, root=Path("/nowhere")):
    return [(RunSpec(k, {}), root / k) for k in keys]


def test_lost_workers_are_retried_and_summaries_come_back_in_the_jobs_order():
    ex = Dying({"b": 2})
    out = run_jobs(_jobs(["a", "b", "c"]), ex, progress=False)
    assert list(out) == ["a", "b", "c"] and out["b"] == {"key": "b"}
    assert ex.submitted.count("b") == 3 and ex.closed


def test_a_failed_run_or_too_many_deaths_stops_with_the_first_error():
    with pytest.raises(UserError, match=r"1 of 3 retrainings failed; first: bad .*no such thing.*finished runs are kept"):
        run_jobs(_jobs(["a", "bad", "c"]), Dying({}), progress=False, desc="retrainings")
    ex = Dying({"a": 5})
    with pytest.raises(UserError, match="first: a .*worker died"):
        run_jobs(_jobs(["a"]), ex, progress=False, max_attempts=3)
    assert ex.submitted == ["a"] * 3 and ex.closed
    with pytest.raises(ValueError, match="unique"):
        run_jobs(_jobs(["a", "a"]), Dying({}), progress=False)


@pytest.mark.parametrize("name", ["inline", "local"])
def test_executors_train_on_the_given_indices_and_keep_finished_runs(tmp_path, name):
    idx = tuple(range(0, 120, 10))
    jobs = [(RunSpec("m0", SETTINGS, idx), tmp_path / "m0"), (RunSpec("m1", SETTINGS, idx[::-1][:11] + (5,)),
                                                               tmp_path / "m1")]  # fmt: skip
    ex = make_executor(name, workers=2, threads=1) if name == "local" else make_executor(name)
    summaries = run_jobs(jobs, ex, progress=False)
    assert [s["n_train"] for s in summaries.values()] == [12, 12]
    assert json.loads((tmp_path / "m0" / "subset.json").read_text())["indices"] == list(idx)
    assert json.loads((tmp_path / "m1" / "subset.json").read_text())["indices"] == list(jobs[1][0].indices)
    before = (tmp_path / "m0" / "summary.json").stat().st_mtime_ns
    assert run_jobs(jobs, InlineExecutor(), progress=False) == summaries  # finished: returned, not redone
    assert (tmp_path / "m0" / "summary.json").stat().st_mtime_ns == before
    idle = Dying({})  # finished runs are read in this process: no run goes to an executor (no worker starts)
    assert run_jobs(jobs, idle, progress=False) == summaries and idle.submitted == [] and idle.closed
    other = [(RunSpec("m0", SETTINGS, tuple(np.add(idx, 1).tolist())), tmp_path / "m0")]
    with pytest.raises(UserError, match="settings differ"):
        run_jobs(other, InlineExecutor(), progress=False)


class Together(Dying):
    """Takes up to ``together`` runs a submission and records the submissions' sizes."""

    def __init__(self, together):
        super().__init__({})
        self.together, self.sizes = together, []

    def submit(self, spec, run_dir):
        self.submit_together([(spec, run_dir)])

    def submit_together(self, jobs):
        assert len(jobs) <= self.together
        self.sizes.append(len(jobs))
        for spec, run_dir in jobs:
            super().submit(spec, run_dir)


def test_runs_go_together_in_submissions_that_keep_every_slot_busy():
    ex = Together(4)
    out = run_jobs(_jobs([f"k{i}" for i in range(10)]), ex, progress=False)
    assert list(out) == [f"k{i}" for i in range(10)]
    assert ex.sizes == [4, 4, 1, 1]  # two slots: 4 and 4, then the last two spread over both
    ex = Together(8)
    run_jobs(_jobs([f"k{i}" for i in range(6)]), ex, progress=False)
    assert ex.sizes == [3, 3]  # not 6 and nothing


@pytest.mark.parametrize("name", ["inline", "local"])
def test_executors_train_runs_together_where_asked(tmp_path, name):
    """``together=2``: runs that may share a loop train in one (transfer.together), one submission at a time."""
    jobs = [(RunSpec(f"t{i}", SETTINGS, tuple(range(i, 120, 10))), tmp_path / f"t{i}") for i in range(3)]
    ex = make_executor(name, workers=1, threads=1, together=2) if name == "local" else make_executor(name, together=2)
    assert "up to 2 runs a loop" in ex.description
    summaries = run_jobs(jobs, ex, progress=False)
    assert [s.get("together") for s in summaries.values()] == [2, 2, None]
    assert json.loads((tmp_path / "t1" / "subset.json").read_text())["indices"] == list(jobs[1][0].indices)


def test_an_unknown_executor_is_refused():
    with pytest.raises(UserError, match="unknown executor 'dask'; choose from inline, local, ray"):
        make_executor("dask")


def test_a_local_executor_starts_no_more_workers_than_runs(tmp_path):
    from study.sweeps.executors import MAX_WORKERS, LocalExecutor

    with pytest.raises(UserError, match=f"--workers must be in \\[1, {MAX_WORKERS}\\]"):
        LocalExecutor(MAX_WORKERS + 1, 1)
    ex = LocalExecutor(9, 1)
    started = []
    start = ex._start
    ex._start = lambda slot: started.append(slot) or start(slot)
    runs = [(RunSpec(f"k{i}", SETTINGS, tuple(range(i, 120, 10))), tmp_path / f"k{i}") for i in range(2)]
    summaries = run_jobs(runs, ex, progress=False)
    assert len(summaries) == 2 and started == [0, 1]  # 9 slots, 2 runs: 2 worker processes


def test_an_executor_is_one_entry_in_the_table_and_the_commands_offer_it(tmp_path):
    from study.attribution.leave_one_out import ValidateConfig
    from study.sweeps.coordinator import SweepConfig
    from study.sweeps.engines import EXECUTORS, register_executor

    register_executor("test-inline", lambda settings: InlineExecutor())
    try:
        assert make_executor("test-inline").description.startswith("inline")
        assert SweepConfig("g.toml", str(tmp_path / "s"), executor="test-inline").executor == "test-inline"
        assert ValidateConfig(run="r", out=str(tmp_path / "v"), lds=5, executor="test-inline").executor == "test-inline"
        with pytest.raises(UserError, match="registered already"):
            register_executor("test-inline", lambda settings: InlineExecutor())
    finally:
        EXECUTORS.pop("test-inline")
    with pytest.raises(UserError, match="--executor must be one of local, ray, slurm"):
        SweepConfig("g.toml", str(tmp_path / "s"), executor="inline")  # a sweep is many runs

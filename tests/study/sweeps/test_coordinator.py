import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.sweeps.coordinator import SweepConfig, SweepDir, run_sweep
from study.sweeps.executors import LocalExecutor
from study.sweeps.grid import parse_grid

GRID = """
sources = ["mnist5k-natural", "mnist5k-l2"]
targets = ["digits"]
blocks = [1]
[seeds]
100 = 3
[finetune]
epochs = 4
eval_every = 2
device = "cpu"
save_every = 0
"""


def _results(out: Path) -> dict:
    con = sqlite3.connect(out / "ledger.sqlite")
    rows = con.execute("SELECT key, state, final_acc, best_acc, run_dir FROM runs ORDER BY key").fetchall()
    con.close()
    # run directories are recorded relative to the sweep directory
    return {k: (state, final, best, (out / d / "metrics.jsonl").read_text()) for k, state, final, best, d in rows}


def _counts(out: Path) -> dict:
    try:
        con = sqlite3.connect(out / "ledger.sqlite", timeout=1)
        counts = dict(con.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall())
        con.close()
        return counts
    except sqlite3.Error:
        return {}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.toml").write_text(GRID)
    counts = run_sweep(SweepConfig(str(root / "grid.toml"), str(root / "a"), workers=2, threads=1), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    return root


def test_a_killed_coordinator_resumes_to_the_same_results(uninterrupted, tmp_path):
    grid, out = uninterrupted / "grid.toml", tmp_path / "b"
    argv = [sys.executable, "-m", "cli.main", "sweep", str(grid), "--out", str(out), "--workers", "2", "--threads", "1",
            "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (
        _counts(out).get("done", 0) >= 1 and _counts(out).get("running", 0) >= 1
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # kill -9 of the coordinator, with runs in flight
    proc.wait()
    before = _counts(out)
    assert before.get("done", 0) >= 1 and before.get("running", 0) >= 1, before
    time.sleep(1.5)  # its workers notice and exit
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.splitlines()[0]) == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    expected = {k.split("/", 1)[1]: v for k, v in _results(uninterrupted / "a").items()}
    got = {k.split("/", 1)[1]: v for k, v in _results(out).items()}
    assert got == expected  # every run once, same accuracies, same metrics, bit for bit


def test_a_finished_sweep_is_not_redone(uninterrupted):
    out = uninterrupted / "a"
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/summary.json")}
    counts = run_sweep(SweepConfig(str(uninterrupted / "grid.toml"), str(out), workers=1, threads=1), progress=False)
    assert counts["done"] == 6 and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_killed_worker_is_replaced_and_its_run_reported_lost(tmp_path):
    spec = parse_grid(GRID.replace("epochs = 4", "epochs = 12")).runs()[0]
    ex = LocalExecutor(workers=1, threads=1)
    try:
        ex.submit(spec, tmp_path / "run")
        assert ex.wait(timeout=2.0) == []  # still running
        ex._workers[0]["proc"].kill()  # kill -9 of the worker (a plain subprocess.Popen)
        (out,) = ex.wait(timeout=30.0)
        assert out.lost and out.key == spec.key and "died" in out.error
        ex.submit(spec, tmp_path / "run")  # a fresh worker continues the run
        outcomes = []
        while not outcomes:
            outcomes = ex.wait(timeout=5.0)
        assert outcomes[0].summary is not None and outcomes[0].summary["epochs"] == 12
    finally:
        ex.shutdown()


def test_failed_runs_are_recorded_and_retried_on_request(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.replace("100 = 3", "100 = 1").replace("blocks = [1]", 'blocks = [1]\nname = "f"'))
    out = tmp_path / "s"
    with SweepDir(out).owned():  # a sweep directory (marked), with a user's file in the way of one run
        pass
    (out / "runs/digits/mnist5k-l2/b1/n100/s20000000").mkdir(parents=True)
    (out / "runs/digits/mnist5k-l2/b1/n100/s20000000/notes.txt").write_text("in the way")
    counts = run_sweep(SweepConfig(str(grid), str(out), workers=1, threads=1), progress=False)
    assert counts["failed"] == 1 and counts["done"] == 1
    (out / "runs/digits/mnist5k-l2/b1/n100/s20000000/notes.txt").unlink()
    assert run_sweep(SweepConfig(str(grid), str(out), workers=1, threads=1), progress=False)["failed"] == 1
    counts = run_sweep(SweepConfig(str(grid), str(out), workers=1, threads=1, retry_failed=True), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 2, "failed": 0}


def test_the_ray_executor_fills_the_same_ledger(uninterrupted, tmp_path):
    ray = pytest.importorskip("ray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        counts = run_sweep(
            SweepConfig(str(uninterrupted / "grid.toml"), str(tmp_path / "r"), executor="ray"), progress=False
        )
    finally:
        ray.shutdown()
    assert counts == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    expected = {k.split("/", 1)[1]: v[:3] for k, v in _results(uninterrupted / "a").items()}
    assert {k.split("/", 1)[1]: v[:3] for k, v in _results(tmp_path / "r").items()} == expected


def test_the_slurm_executor_runs_job_arrays_into_the_same_ledger(uninterrupted, tmp_path):
    """submitit's local cluster runs the same job arrays as processes here: same ledger, same results."""
    pytest.importorskip("submitit")
    out = tmp_path / "sl"
    cfg = SweepConfig(str(uninterrupted / "grid.toml"), str(out), executor="slurm", slurm_cluster="local", slurm_gpus=0,
                      slurm_cpus=1, slurm_array=2, slurm_time=10)  # fmt: skip
    assert run_sweep(cfg, progress=False) == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    expected = {k.split("/", 1)[1]: v[:3] for k, v in _results(uninterrupted / "a").items()}
    assert {k.split("/", 1)[1]: v[:3] for k, v in _results(out).items()} == expected
    workers = {w for (w,) in sqlite3.connect(out / "ledger.sqlite").execute("SELECT worker FROM runs")}
    assert len(workers) == 6 and all(w.startswith("slurm-") for w in workers)  # one array task per run
    assert any((out / "slurm").iterdir())  # submitit's job files and logs, inside the sweep directory


def test_slurm_settings_are_checked_and_belong_to_the_slurm_executor(tmp_path):
    from study.sweeps.slurm import SlurmExecutor
    from study.sweeps.slurm_settings import SlurmSettings
    from transfer.errors import UserError

    with pytest.raises(UserError, match="--slurm-partition is for --executor slurm"):
        SweepConfig("g.toml", str(tmp_path / "s"), slurm_partition="gpu")
    with pytest.raises(UserError, match="--slurm-array must be"):
        SweepConfig("g.toml", str(tmp_path / "s"), executor="slurm", slurm_array=0)
    cfg = SweepConfig("g.toml", str(tmp_path / "s"), executor="slurm", slurm_partition="gpu", slurm_time=30)
    assert cfg.slurm_settings() == SlurmSettings(str(tmp_path / "s" / "slurm"), "gpu", 1, 8, None, 30, 64, "slurm")
    if __import__("shutil").which("sbatch") is None:
        with pytest.raises(UserError, match="no sbatch or srun on this machine's PATH"):
            SlurmExecutor(cfg.slurm_settings())
        grid = tmp_path / "g.toml"
        grid.write_text(GRID)
        with pytest.raises(UserError, match="no sbatch"):
            run_sweep(SweepConfig(str(grid), str(tmp_path / "s"), executor="slurm"), progress=False)
        assert not (tmp_path / "s").exists()  # refused before the sweep directory was made


def _fake_tools(tmp_path, monkeypatch, **scripts):
    """Stand-ins for Slurm's commands (name -> shell body) first on PATH, the machine's own sbatch/srun hidden."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    rest = [d for d in os.environ["PATH"].split(os.pathsep)
            if not any((Path(d) / t).exists() for t in ("sbatch", "srun"))]  # fmt: skip
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), *rest]))


def test_a_refused_slurm_submission_is_one_line_and_leaves_the_runs_pending(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from transfer.errors import UserError

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    _fake_tools(tmp_path, monkeypatch, sbatch='echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1',
                srun="exit 0")  # fmt: skip
    out = tmp_path / "s"
    with pytest.raises(UserError, match="submitting a job array of .* failed .*invalid partition") as caught:
        run_sweep(SweepConfig(str(grid), str(out), executor="slurm", slurm_partition="gpu"), progress=False)
    assert "\n" not in str(caught.value)
    assert _counts(out) == {"pending": 6}  # nothing left running: the same command resumes them


def test_slurm_without_srun_is_refused_before_the_sweep_directory_is_made(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from transfer.errors import UserError

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    _fake_tools(tmp_path, monkeypatch, sbatch="exit 0")
    with pytest.raises(UserError, match="no srun on this machine's PATH"):
        run_sweep(SweepConfig(str(grid), str(tmp_path / "s"), executor="slurm"), progress=False)
    assert not (tmp_path / "s").exists()


def test_a_slurm_task_that_dies_is_reported_lost_and_shutdown_cancels(tmp_path):
    """A task that ends without a result (here: its process exits hard) is lost, to be resubmitted."""
    pytest.importorskip("submitit")
    from study.sweeps.executors import Outcome
    from study.sweeps.slurm import SlurmExecutor
    from study.sweeps.slurm_settings import SlurmSettings

    ex = SlurmExecutor(SlurmSettings(str(tmp_path / "slurm"), gpus_per_run=0, cpus_per_run=1, cluster="local"))
    jobs = ex._ex.map_array(os._exit, [3])  # a task killed without a result
    ex._jobs[jobs[0]] = "k"
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + 60
    while not outcomes and time.monotonic() < deadline:
        outcomes = ex.wait(timeout=1.0)
    assert outcomes and outcomes[0].lost and outcomes[0].key == "k" and "ended without a result" in outcomes[0].error

    class InFlight:  # a task still running when the coordinator stops (submitit's own cancel is scancel's)
        cancelled = []

        def cancel(self, check=True):
            self.cancelled.append(check)

    ex._jobs[InFlight()] = "slow"
    ex.submit(parse_grid(GRID).runs()[0], tmp_path / "never")  # submitted but not yet sent as an array
    ex.shutdown()
    assert InFlight.cancelled == [False] and not ex._jobs and not ex._buffer

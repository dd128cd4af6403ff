import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

from cli.main import main
from study.attribution import InfluenceConfig, run_influence
from study.attribution.store import FORMAT, InfluenceDir
from transfer.errors import UserError

_KILL_MIDWAY = """
import sys, time
import interp.influence as inf
from cli.main import main
original = inf.blocked_product
def slow(left, right_t, out, block, progress, desc, *scales):
    result = original(left, right_t, out, block, progress, desc, *scales)
    if desc == "influence test":  # the new test matrix is written, the train matrix not yet
        print("midway", flush=True)
        time.sleep(60)
    return result
inf.blocked_product = slow
sys.exit(main(sys.argv[1:]))
"""


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_a_complete_directory_reads_back(influence_out):
    res = InfluenceDir(influence_out).read()
    assert res.meta["format"] == FORMAT and res["influence_test"].shape == (30, 80)
    assert res.label == "mnist5k-l2 -> digits"


def test_a_rerun_killed_midway_is_refused_then_redone(finished_run, influence_out, tmp_path, capsys):
    out = _copy(influence_out, tmp_path / "inf")
    old_test = np.load(out / "influence_test.npy")
    argv = [
        "influence",
        "--run",
        str(finished_run),
        "--out",
        str(out),
        "--test",
        "30",
        "--damping",
        "0.01",
        "--no-progress",
    ]
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MIDWAY, *argv], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "midway"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "meta.json").exists()  # the old completion mark went first
    capsys.readouterr()
    assert main(["class-match", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a complete influence directory" in err and len(err.strip().splitlines()) == 1
    assert main(["plot-influence", str(out)]) == 2
    # the same command again completes the directory, and the killed run's temporaries are gone
    assert main(argv) == 0
    assert not list(out.glob(".*.tmp"))
    res = InfluenceDir(out).read()
    assert res.meta["settings"][0]["damping"] == 0.01
    assert not np.allclose(res["influence_test"], old_test)  # damping changed the numbers
    assert main(["class-match", str(out), "--k", "5"]) == 0


def test_a_full_disk_leaves_an_incomplete_directory_and_one_line(finished_run, influence_out, tmp_path):
    out = _copy(influence_out, tmp_path / "inf")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    argv = ["influence", "--run", str(finished_run), "--out", str(out), "--test", "30", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "hessian.npy: the write stopped short" in proc.stderr  # hessian.npy (3.4 MB) hit the limit
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(UserError, match="not a complete influence directory"):
        InfluenceDir(out).read()


def test_no_space_is_refused_before_the_old_result_is_touched(finished_run, influence_out, tmp_path, monkeypatch):
    out = _copy(influence_out, tmp_path / "inf")
    (out / "hessian.npy").unlink()  # the old result frees 72 kB; all 360 test images need 281 kB
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(UserError, match="not enough disk space .* for the influence matrices"):
        run_influence(InfluenceConfig(run=str(finished_run), out=str(out)), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_the_memory_map_is_checked_for_space_right_before_it_is_created(tmp_path, monkeypatch):
    import interp.influence as inf
    from interp.errors import InterpError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(InterpError, match="needs 0.00 GB"):
        inf.output_array((100, 100), tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()


def test_readers_refuse_mixed_or_foreign_contents(influence_out, tmp_path):
    out = _copy(influence_out, tmp_path / "inf")
    np.save(out / "influence_train.npy", np.zeros((3, 3)))  # a matrix from somewhere else
    with pytest.raises(UserError, match=r"has shape \(3, 3\), not \(80, 80\)"):
        InfluenceDir(out).read()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "format"}))
    with pytest.raises(UserError, match="not an influence directory's meta.json"):
        InfluenceDir(out).read()


def test_derived_outputs_are_removed_when_the_directory_is_rewritten(finished_run, influence_out, tmp_path):
    out = _copy(influence_out, tmp_path / "inf")
    assert main(["class-match", str(out), "--k", "5"]) == 0
    assert (out / "class_match.csv").exists()
    run_influence(InfluenceConfig(run=str(finished_run), out=str(out), test="30", save_hessian=False), progress=False)
    assert not (out / "class_match.csv").exists() and not (out / "hessian.npy").exists()
    assert os.stat(out / "meta.json").st_size > 0

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from transfer.errors import UserError
from transfer.files import (
    DirLock,
    atomic_write_json,
    atomic_write_text,
    check_free_space,
    read_json,
    remove_stale_temporaries,
    staged,
    strict_json,
)


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # mkstemp would have given 0600


def test_strict_json_has_no_bare_nan(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 0.5})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": None,
        "b": [1.0, None],
        "c": 0.5,
    }
    assert strict_json({"x": 1}, indent=None) == '{"x": 1}'


def test_read_json_names_the_damaged_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(UserError, match="missing.json is missing"):
        read_json(tmp_path / "missing.json")


def test_staged_removes_its_temporary_on_failure(tmp_path):
    with pytest.raises(RuntimeError), staged(tmp_path / "x.npy") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with staged(tmp_path / "x.npy") as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".state.pt.deadbeef.tmp").write_bytes(b"left by a kill")
    (tmp_path / "keep.txt").write_text("user file")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".state.pt.deadbeef.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_lock_is_exclusive_within_a_process(tmp_path):
    with DirLock(tmp_path / "d"):
        with pytest.raises(UserError, match=f"another robust-transfer process \\(pid {os.getpid()}\\)"):
            DirLock(tmp_path / "d").acquire()
    with DirLock(tmp_path / "d"):  # released on exit
        pass


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from transfer.files import DirLock; import time; DirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            DirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    with DirLock(tmp_path):  # no stale lock survives kill -9
        pass


def test_lock_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory"):
        DirLock(tmp_path / "f").acquire()


def test_free_space_check(tmp_path):
    check_free_space(tmp_path, 1, "a byte")
    with pytest.raises(UserError, match="not enough disk space .* for the moon"):
        check_free_space(tmp_path, 10**20, "the moon")


def test_an_output_directory_is_marked_locked_and_never_takes_foreign_files(tmp_path):
    from transfer.errors import UserError
    from transfer.files import MARKER_NAME, OutputDir, name_patterns

    ours = name_patterns("table.csv", "fig_*.png")
    with OutputDir(tmp_path / "o", "summary", ours):
        (tmp_path / "o" / "table.csv").write_text("1")
        with pytest.raises(UserError, match="being written by another robust-transfer process"):
            OutputDir(tmp_path / "o", "summary", ours).__enter__()
    assert (tmp_path / "o" / MARKER_NAME).read_text() == "summary\n"
    with OutputDir(tmp_path / "o", "summary", ours):  # its own directory again
        pass
    with pytest.raises(UserError, match="belongs to robust-transfer's summary, not its figures"):
        with OutputDir(tmp_path / "o", "figures", ours):
            pass
    (tmp_path / "o" / "thesis.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files that are not robust-transfer's summary \(thesis.txt\)"):
        with OutputDir(tmp_path / "o", "summary", ours):
            pass
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "table.csv").write_text("the user's")
    with pytest.raises(UserError, match="has no .robust-transfer marker"):
        with OutputDir(tmp_path / "u", "summary", ours):
            pass
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["table.csv"]  # not even a lock file was left


def test_a_failed_command_leaves_no_directory_it_created(tmp_path):
    from transfer.files import OutputDir, name_patterns

    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "new", "summary", name_patterns("*.csv")):
            raise RuntimeError("a bad setting found late")
    assert not (tmp_path / "new").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_reported_as_a_full_disk_by_checkpoint_writes(tiny_disk):
    import errno

    from cli.main import os_error_message
    from transfer.files import atomic_torch_save

    state = {"weights": torch.zeros(2_000_000), "note": "8 MB of float32"}
    with pytest.raises(OSError) as info:  # torch.save itself says "[enforce fail at inline_container.cc] unexpected pos"
        atomic_torch_save(state, tiny_disk / "state.pt")
    assert info.value.errno == errno.ENOSPC
    message = os_error_message(info.value)
    assert f"no space left on the device of {tiny_disk / 'state.pt'} (needed ~8.0 MB" in message
    assert "the disk is full" in message
    assert list(tiny_disk.iterdir()) == []  # no temporary left behind


def test_a_sweep_run_on_a_full_disk_fails_with_the_disk_named(tiny_disk):
    from study.sweeps.worker import execute_run

    (tiny_disk / "filler").write_bytes(b"\0" * 2_400_000)  # leaves less than the run's state and model need
    settings = {"source": "mnist5k-l2", "target": "digits", "blocks": "all", "subset": "100", "epochs": "1",
                "augment": "none", "device": "cpu", "save_every": 0.0}  # fmt: skip
    result = execute_run(settings, tiny_disk / "run")
    assert result["summary"] is None and "no space left on the device of" in result["error"], result["error"]
    assert "unexpected pos" not in result["error"]

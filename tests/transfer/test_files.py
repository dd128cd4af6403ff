import json
import os
import stat
import subprocess
import sys
import time

import pytest

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

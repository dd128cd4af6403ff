"""Issue 18's sweep defects: each refused with one clear line, before anything is written or run."""

import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from cli.main import main
from study.sweeps.coordinator import SweepConfig, SweepDir, run_sweep, sweep_status
from study.sweeps.executors import Executor, Outcome, check_ray_address
from study.sweeps.grid import MAX_RUNS, check_runnable, parse_grid, read_grid, source_dirs
from study.sweeps.ledger import Ledger
from transfer.errors import UserError

WEIGHTS = Path(__file__).resolve().parents[3] / "transfer" / "weights"
BASE = 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n'


class Scripted(Executor):
    """Runs nothing: answers every submitted run with a summary, or with ``error`` for keys containing ``fail``."""

    def __init__(self, fail: str | None = None):
        self.slots, self.description, self.fail = 2, "scripted", fail
        self.submitted: list[tuple[str, Path]] = []
        self._pending: list = []

    def submit(self, spec, run_dir):
        self.submitted.append((spec.key, Path(run_dir)))
        self._pending.append(spec.key)

    def wait(self, timeout):
        out, self._pending = self._pending, []
        summary = {"n_train": 100, "final_test_acc": 0.5, "best_test_acc": 0.5, "best_epoch": 1, "wall_time_s": 0.1}
        return [Outcome(k, None, "OSError: no space left", device="cpu", worker="s") if self.fail and self.fail in k
                else Outcome(k, summary, None, device="cpu", worker="s") for k in out]  # fmt: skip

    def shutdown(self):
        pass


def test_a_grid_that_is_not_utf8_is_a_user_error(tmp_path):
    (tmp_path / "g.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_grid(tmp_path / "g.toml")


@pytest.mark.parametrize(
    "text,match",
    [
        (BASE.replace('["mnist5k-l2"]', "[{a = 1}]"), "'sources' must list strings; got {'a': 1}"),
        (BASE.replace('["digits"]', "[3]"), "'targets' must list strings"),
        (BASE.replace("[0]", "[true]"), "'blocks' must list integers or strings"),
        (BASE.replace('["mnist5k-l2"]', '[""]'), "'sources' must list strings"),
    ],
)
def test_axis_values_of_the_wrong_type_are_refused(text, match):
    with pytest.raises(UserError, match=match):
        parse_grid(text)


def test_a_huge_grid_is_refused_by_its_count_without_expanding_it():
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"100,000,000 runs, more than the 200,000"):
        parse_grid(BASE.replace("100 = 1", "50 = 100000000"))
    assert time.perf_counter() - start < 30  # counted, not materialised (it used to be killed by the OOM killer)
    assert MAX_RUNS >= 12_576


def test_the_dry_run_counts_combinations_not_runs(capsys):
    grid = BASE.replace("100 = 1", "100 = 1000")
    assert parse_grid(grid).count == 1000
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dry{os.getpid()}.toml"
    path.write_text(grid)
    try:
        assert main(["sweep", str(path), "--out", "unused", "--dry-run", "--images-per-second", "1000"]) == 0
    finally:
        path.unlink()
    assert "1,000 runs" in capsys.readouterr().out


def test_two_sources_with_one_file_name_get_two_runs(tmp_path):
    for d, name in (("a", "mnist5k-natural.pt"), ("b", "mnist5k-l2.pt")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "model.pt").write_bytes((WEIGHTS / name).read_bytes())
    a, b = str(tmp_path / "a" / "model.pt"), str(tmp_path / "b" / "model.pt")
    grid = parse_grid(f'sources = ["{a}", "{b}"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n')
    keys = [r.key for r in grid.runs()]
    assert len(set(keys)) == 2 and all("model.pt-" in k for k in keys)
    assert source_dirs(["mnist5k-l2", a]) == {"mnist5k-l2": "mnist5k-l2", a: "model.pt"}  # no clash: names kept
    ex = Scripted()
    counts = run_sweep(SweepConfig(str(_write(tmp_path, grid.text)), str(tmp_path / "s")), progress=False, executor=ex)
    assert counts["done"] == 2 and len({d for _, d in ex.submitted}) == 2


def _write(root: Path, text: str) -> Path:
    path = root / "grid.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "sources,blocks,size,match",
    [
        ('["/no/such/model.pt"]', "[0]", "100", "is neither a source name"),
        ('["mnist5k-l2"]', "[7]", "100", "--blocks 7 exceeds the 6 residual blocks"),
        ('["mnist5k-l2"]', "[0]", "5000", "larger than the split it is drawn from (1437 images)"),
        ('["mnist5k-l2"]', "[0]", "5", "cannot cover 10 classes"),
    ],
)
def test_settings_a_run_would_refuse_are_found_before_the_ledger_exists(tmp_path, sources, blocks, size, match):
    text = f"sources = {sources}\ntargets = [\"digits\"]\nblocks = {blocks}\n[seeds]\n{size} = 1\n"
    with pytest.raises(UserError, match=re.escape(match)):
        check_runnable(parse_grid(text))
    with pytest.raises(UserError, match=re.escape(match)):
        run_sweep(SweepConfig(str(_write(tmp_path, text)), str(tmp_path / "s")), progress=False, executor=Scripted())
    assert not (tmp_path / "s").exists()


def test_the_same_file_listed_twice_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.pt").write_bytes((WEIGHTS / "mnist5k-l2.pt").read_bytes())
    a = str(tmp_path / "a" / "model.pt")
    text = f'sources = ["{a}", "{tmp_path}/a/../a/model.pt"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n'
    with pytest.raises(UserError, match="are the same file; list it once"):
        check_runnable(parse_grid(text))


def test_a_sweep_with_a_failed_run_exits_non_zero_with_the_first_error(tmp_path, monkeypatch, capsys):
    import study.sweeps.coordinator

    grid = _write(tmp_path, BASE.replace('["mnist5k-l2"]', '["mnist5k-l2", "mnist5k-natural"]'))
    monkeypatch.setattr(study.sweeps.coordinator, "make_executor", lambda cfg: Scripted(fail="natural"))
    code = main(["sweep", str(grid), "--out", str(tmp_path / "s"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code != 0 and json.loads(out.splitlines()[0])["failed"] == 1
    assert "1 of 2 runs failed; first: digits/mnist5k-natural/" in err and "no space left" in err
    assert len(err.strip().splitlines()) == 1


def test_run_directories_follow_the_sweep_not_the_working_directory(tmp_path, monkeypatch):
    grid = _write(tmp_path, BASE.replace("100 = 1", "100 = 2"))
    (tmp_path / "first").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    ex = Scripted()
    run_sweep(SweepConfig(str(grid), "sweep"), progress=False, executor=ex)  # relative --out
    with Ledger(tmp_path / "first" / "sweep" / "ledger.sqlite") as ledger:
        ledger.retry_failed()
        ledger.db.execute("UPDATE runs SET state = 'pending' WHERE position = 1")  # one run left to do
    monkeypatch.chdir(tmp_path / "elsewhere")
    ex = Scripted()
    run_sweep(SweepConfig(str(grid), str(tmp_path / "first" / "sweep")), progress=False, executor=ex)
    assert [d.parent.parent.parent.parent.parent.parent for _, d in ex.submitted] == [tmp_path / "first" / "sweep"]
    assert not list((tmp_path / "elsewhere").iterdir())
    stored = sqlite3.connect(tmp_path / "first" / "sweep" / "ledger.sqlite").execute("SELECT run_dir FROM runs")
    assert all(d.startswith("runs/") for (d,) in stored)  # relative to the sweep directory, never to a cwd


def test_status_refuses_a_foreign_database_and_leaves_it_unchanged(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    db = sqlite3.connect(tmp_path / "d" / "ledger.sqlite")
    db.execute("CREATE TABLE notes (x)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    before = (tmp_path / "d" / "ledger.sqlite").read_bytes()
    assert main(["sweep", "status", str(tmp_path / "d")]) == 2
    assert "is not a robust-transfer sweep ledger" in capsys.readouterr().err
    grid = _write(tmp_path, BASE)
    with pytest.raises(UserError):  # nor does a sweep adopt it (nor any directory holding it)
        run_sweep(SweepConfig(str(grid), str(tmp_path / "d")), progress=False, executor=Scripted())
    assert (tmp_path / "d" / "ledger.sqlite").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ledger.sqlite"]
    mode = sqlite3.connect(tmp_path / "d" / "ledger.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"  # not switched to WAL


def test_status_reads_without_writing(sweep_factory):
    root = sweep_factory("s", done=1)
    ledger = root / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = ledger.read_bytes()
    assert sweep_status(root)["done"] == 1
    assert ledger.read_bytes() == before


def test_a_ledger_made_before_the_format_marker_is_still_read(sweep_factory):
    root = sweep_factory("s", done=2)
    with sqlite3.connect(root / "ledger.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'format'")
    assert sweep_status(root)["done"] == 2
    with Ledger(root / "ledger.sqlite") as ledger:  # a coordinator marks it
        assert ledger.total() == 4
    assert sqlite3.connect(root / "ledger.sqlite").execute("SELECT value FROM meta WHERE key = 'format'").fetchone()


def test_an_unreachable_ray_address_is_one_line_within_seconds():
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"no Ray cluster answers at 127.0.0.1:1"):
        check_ray_address("127.0.0.1:1", timeout=5)
    assert time.perf_counter() - start < 10
    with pytest.raises(UserError, match="--address must be HOST:PORT"):
        check_ray_address("nonsense")
    check_ray_address(None)  # a local Ray: nothing to check


def test_a_directory_with_user_files_is_not_a_sweep(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "thesis.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files that are not robust-transfer's sweep \(thesis.txt\)"):
        run_sweep(SweepConfig(str(_write(tmp_path, BASE)), str(tmp_path / "s")), progress=False, executor=Scripted())
    with pytest.raises(UserError, match="no .robust-transfer marker"):  # own names, but no marker and no ledger
        (tmp_path / "t" / "runs").mkdir(parents=True)
        with SweepDir(tmp_path / "t").owned():
            pass

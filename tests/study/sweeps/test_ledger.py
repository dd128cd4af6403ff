import pytest

from study.sweeps.grid import parse_grid
from study.sweeps.ledger import Ledger
from transfer.errors import UserError

GRID = 'sources = ["mnist5k-natural", "mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 2\n'
SUMMARY = {"final_test_acc": 0.5, "best_test_acc": 0.6, "best_epoch": 3, "wall_time_s": 1.0, "n_train": 100}


@pytest.fixture
def ledger(tmp_path):
    grid = parse_grid(GRID)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.bind_grid(grid.digest, grid.name)
        assert ledger.add(grid.runs(), tmp_path) == 4
        yield ledger


def test_runs_are_added_once_and_claimed_in_grid_order(ledger, tmp_path):
    grid = parse_grid(GRID)
    assert ledger.add(grid.runs(), tmp_path) == 0  # a second start adds nothing
    claimed = ledger.claim(3)
    assert [s.key for s, _ in claimed] == [r.key for r in grid.runs()[:3]]
    assert claimed[0][1] == grid.runs()[0].run_dir(tmp_path)
    assert ledger.counts() == {"pending": 1, "running": 3, "done": 0, "failed": 0}


def test_outcomes_and_an_interrupted_coordinator(ledger):
    (a, _), (b, _), (c, _) = ledger.claim(3)
    ledger.finish(a.key, SUMMARY, "cpu", "local-0")
    ledger.fail(b.key, "--lr must be ...", "cpu", "local-1")
    assert ledger.counts() == {"pending": 1, "running": 1, "done": 1, "failed": 1}
    assert ledger.requeue_interrupted() == 1  # c was running when its coordinator died
    row = next(r for r in ledger.rows() if r["key"] == c.key)
    assert row["state"] == "pending" and row["attempts"] == 0  # the coordinator's death is not the run's
    done = ledger.rows("done")[0]
    assert (done["final_acc"], done["best_acc"], done["n_train"], done["host"]) == (0.5, 0.6, 100, done["host"])
    assert ledger.retry_failed() == 1 and ledger.counts()["pending"] == 3


def test_a_run_whose_worker_keeps_dying_fails_after_max_attempts(ledger):
    key = ledger.claim(1)[0][0].key
    assert ledger.lost(key, "worker died", max_attempts=2) == "pending"
    assert ledger.claim(1)[0][0].key == key
    assert ledger.lost(key, "worker died", max_attempts=2) == "failed"
    assert "worker died (2 attempts)" in ledger.rows("failed")[0]["error"]


def test_a_ledger_of_another_grid_is_refused(ledger):
    other = parse_grid(GRID.replace("100 = 2", "100 = 3"))
    with pytest.raises(UserError, match="belongs to another grid"):
        ledger.bind_grid(other.digest, other.name)
    same = parse_grid("# a comment changes nothing\n" + GRID)
    ledger.bind_grid(same.digest, same.name)


def test_a_file_that_is_not_a_ledger(tmp_path):
    (tmp_path / "x.sqlite").write_bytes(b"not sqlite at all, " * 100)
    with pytest.raises(UserError, match="is not a readable sweep ledger"):
        Ledger(tmp_path / "x.sqlite")


def test_finished_runs_record_the_source_hash_and_an_older_ledger_gains_the_column(ledger, tmp_path):
    import sqlite3

    (a, _), *_ = ledger.claim(1)
    ledger.finish(a.key, SUMMARY | {"source_sha256": "ab" * 32}, "cpu", "local-0")
    assert ledger.rows("done")[0]["source_sha256"] == "ab" * 32
    old = tmp_path / "old" / "ledger.sqlite"
    old.parent.mkdir()
    with Ledger(old):
        pass
    db = sqlite3.connect(old)
    db.execute("ALTER TABLE runs DROP COLUMN source_sha256")  # a ledger written before the column existed
    db.commit()
    db.close()
    with Ledger(old) as reopened:
        assert "source_sha256" in {r[1] for r in reopened.db.execute("PRAGMA table_info(runs)")}

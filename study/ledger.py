"""The sweep ledger: one SQLite row per run, the single source of truth of a sweep.

States: ``pending`` -> ``running`` -> ``done`` | ``failed``. Only the coordinator writes the ledger,
and it holds the sweep directory's lock while it does, so a row still ``running`` when a
coordinator starts belongs to one that died: :meth:`Ledger.requeue_interrupted` puts it back to
``pending``, and its run continues from its ``state.pt`` through ``finetune --resume``. Every change
is one committed transaction in WAL mode, so a kill at any moment leaves the ledger consistent.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

from study.grid import RunSpec
from transfer.errors import UserError

STATES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    settings TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    host TEXT,
    device TEXT,
    worker TEXT,
    started REAL,
    ended REAL,
    n_train INTEGER,
    final_acc REAL,
    best_acc REAL,
    best_epoch INTEGER,
    wall_s REAL
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, position);
"""


class Ledger:
    """A sweep's ``ledger.sqlite``; use as a context manager."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a readable sweep ledger ({exc})") from None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()

    def _tx(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def bind_grid(self, digest: str, name: str) -> None:
        """Record the grid this ledger belongs to; a ledger of another grid is refused."""
        row = self._tx("SELECT value FROM meta WHERE key = 'grid_digest'").fetchone()
        if row is None:
            self.db.execute("BEGIN IMMEDIATE")
            self._tx("INSERT INTO meta VALUES ('grid_digest', ?), ('grid_name', ?)", (digest, name))
            self.db.execute("COMMIT")
        elif row["value"] != digest:
            raise UserError(
                f"{self.path} belongs to another grid (its runs or settings differ); use a new --out for this grid"
            )

    def add(self, specs: list[RunSpec], root: Path) -> int:
        """Insert the runs not yet in the ledger as ``pending``; return how many were new."""
        before = self.total()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT OR IGNORE INTO runs (key, position, settings, run_dir, state) VALUES (?, ?, ?, ?, 'pending')",
            [(s.key, i, json.dumps(s.settings, sort_keys=True), str(s.run_dir(root))) for i, s in enumerate(specs)],
        )
        self.db.execute("COMMIT")
        return self.total() - before

    def total(self) -> int:
        return self._tx("SELECT COUNT(*) FROM runs").fetchone()[0]

    def requeue_interrupted(self) -> int:
        """``running`` -> ``pending`` for runs whose coordinator died (call only under the sweep lock)."""
        # the coordinator's death is not the run's fault: the attempt it was on does not count
        return self._tx(
            "UPDATE runs SET state = 'pending', attempts = MAX(attempts - 1, 0) WHERE state = 'running'"
        ).rowcount

    def retry_failed(self) -> int:
        return self._tx("UPDATE runs SET state = 'pending', attempts = 0, error = NULL WHERE state = 'failed'").rowcount

    def claim(self, n: int) -> list[tuple[RunSpec, Path]]:
        """Mark up to ``n`` pending runs (grid order) ``running``; return them with their run directories."""
        self.db.execute("BEGIN IMMEDIATE")
        rows = self._tx(
            "SELECT key, settings, run_dir FROM runs WHERE state = 'pending' ORDER BY position LIMIT ?", (n,)
        ).fetchall()
        now, host = time.time(), socket.gethostname()
        for r in rows:
            self._tx(
                "UPDATE runs SET state = 'running', started = ?, ended = NULL, host = ?, attempts = attempts + 1 "
                "WHERE key = ?",
                (now, host, r["key"]),
            )
        self.db.execute("COMMIT")
        return [(RunSpec(r["key"], json.loads(r["settings"])), Path(r["run_dir"])) for r in rows]

    def finish(self, key: str, summary: dict, device: str, worker: str) -> None:
        self._tx(
            "UPDATE runs SET state = 'done', ended = ?, error = NULL, device = ?, worker = ?, n_train = ?, "
            "final_acc = ?, best_acc = ?, best_epoch = ?, wall_s = ? WHERE key = ?",
            (time.time(), device, worker, summary["n_train"], summary["final_test_acc"], summary["best_test_acc"],
             summary["best_epoch"], summary.get("wall_time_s"), key),
        )  # fmt: skip

    def fail(self, key: str, error: str, device: str = "", worker: str = "") -> None:
        self._tx(
            "UPDATE runs SET state = 'failed', ended = ?, error = ?, device = ?, worker = ? WHERE key = ?",
            (time.time(), error, device, worker, key),
        )

    def lost(self, key: str, error: str, max_attempts: int) -> str:
        """The run's worker died: back to ``pending``, or ``failed`` after ``max_attempts``; return the new state."""
        attempts = self._tx("SELECT attempts FROM runs WHERE key = ?", (key,)).fetchone()[0]
        if attempts >= max_attempts:
            self.fail(key, f"{error} ({attempts} attempts)")
            return "failed"
        self._tx("UPDATE runs SET state = 'pending', error = ? WHERE key = ?", (error, key))
        return "pending"

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self._tx("SELECT state, COUNT(*) FROM runs GROUP BY state"):
            out[state] = n
        return out

    def rows(self, state: str | None = None) -> list[dict]:
        """Ledger rows (settings parsed), in grid order."""
        sql = "SELECT * FROM runs" + (" WHERE state = ?" if state else "") + " ORDER BY position"
        rows = [dict(r) for r in self._tx(sql, (state,) if state else ())]
        for r in rows:
            r["settings"] = json.loads(r["settings"])
        return rows

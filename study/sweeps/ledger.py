"""The sweep ledger: one SQLite row per run, the single source of truth of a sweep.

States: ``pending`` -> ``running`` -> ``done`` | ``failed``. Only the coordinator writes the ledger,
and it holds the sweep directory's lock while it does, so a row still ``running`` when a
coordinator starts belongs to one that died: :meth:`Ledger.requeue_interrupted` puts it back to
``pending``, and its run continues from its ``state.pt`` through ``finetune --resume``. Every change
is one committed transaction in WAL mode, so a kill at any moment leaves the ledger consistent.

The ledger carries a format marker (``meta.format`` = :data:`FORMAT`); a file without it (another
program's database that happens to be called ``ledger.sqlite``) is refused before anything is
written into it. Readers (``sweep status``, ``summarize``, ``plot``) open it read-only. Run
directories are always ``<sweep directory>/runs/<key>``, wherever the sweep is opened from.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.parse
from pathlib import Path

from study.sweeps.grid import RunSpec
from transfer.errors import UserError

STATES = ("pending", "running", "done", "failed")
FORMAT = "robust-transfer-ledger/1"

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
    wall_s REAL,
    source_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, position);
"""
_ADDED_COLUMNS = (("source_sha256", "TEXT"),)  # columns added after the first version of the format


class Ledger:
    """A sweep's ``ledger.sqlite``; use as a context manager.

    ``readonly``: open an existing ledger for reading only (nothing is ever written, not even the
    journal mode). Otherwise a missing file is created with the schema and the format marker, and
    an existing one is first checked read-only to be a ledger, so a foreign database is never changed.
    """

    def __init__(self, path: Path | str, readonly: bool = False):
        self.path = Path(path)
        self.root = self.path.parent.absolute()
        # a zero-length file is an empty database (sqlite3.connect of a missing path leaves one): nothing to protect
        if readonly or (self.path.exists() and not (self.path.is_file() and self.path.stat().st_size == 0)):
            if not self.path.is_file():
                raise UserError(f"{self.path} is not a sweep ledger (no such file); give a sweep directory")
            probe = self._connect(readonly=True)
            try:
                legacy = self._check_ours(probe)
            finally:
                probe.close()
            if readonly:
                self.db = self._connect(readonly=True)
                return
        else:
            legacy = False
        try:
            self.db = self._connect(readonly=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS:  # a ledger of an earlier version gains them, empty for its old runs
                if column not in columns:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            if legacy or not self._marked(self.db):
                # a new ledger, or one written before the marker existed (recognised by its tables)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a readable sweep ledger ({exc})") from None

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
                db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            else:
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the sweep ledger {self.path} ({exc})") from None
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _marked(db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        return row is not None and row[0] == FORMAT

    def _check_ours(self, db: sqlite3.Connection) -> bool:
        """Raise unless ``db`` is a ledger; return True for one written before the format marker."""
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" in tables:
                if self._marked(db):
                    return False
                row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if row is not None:
                    raise UserError(f"{self.path} is a ledger of format {row[0]!r}; this version reads {FORMAT!r}")
            columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")} if "runs" in tables else set()
            legacy = "meta" in tables and db.execute("SELECT 1 FROM meta WHERE key = 'grid_digest'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a readable sweep ledger ({exc}); nothing was changed") from None
        if legacy and {"key", "state", "settings", "run_dir"} <= columns:
            return True
        raise UserError(
            f"{self.path} is not a robust-transfer sweep ledger (no format marker {FORMAT!r}); nothing was changed: "
            "give a sweep directory, or choose another --out"
        )

    def run_dir(self, key: str) -> Path:
        """Where run ``key`` lives: under the ledger's own directory, not the working directory."""
        return self.root / "runs" / key

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

    def add(self, specs: list[RunSpec], root: Path | None = None) -> int:
        """Insert the runs not yet in the ledger as ``pending``; return how many were new.

        Run directories are recorded relative to the ledger's directory (``runs/<key>``); ``root``
        is accepted for callers that name it and must be that directory.
        """
        if root is not None and Path(root).absolute() != self.root:
            raise UserError(f"the runs of {self.path} live under {self.root}, not {root}")
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):
            raise UserError("two runs of the grid share a key; nothing was added")
        before = self.total()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT OR IGNORE INTO runs (key, position, settings, run_dir, state) VALUES (?, ?, ?, ?, 'pending')",
            [(s.key, i, json.dumps(s.settings, sort_keys=True), f"runs/{s.key}") for i, s in enumerate(specs)],
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
        return [(RunSpec(r["key"], json.loads(r["settings"])), self.run_dir(r["key"])) for r in rows]

    def finish(self, key: str, summary: dict, device: str, worker: str) -> None:
        self._tx(
            "UPDATE runs SET state = 'done', ended = ?, error = NULL, device = ?, worker = ?, n_train = ?, "
            "final_acc = ?, best_acc = ?, best_epoch = ?, wall_s = ?, source_sha256 = ? WHERE key = ?",
            (time.time(), device, worker, summary["n_train"], summary["final_test_acc"], summary["best_test_acc"],
             summary["best_epoch"], summary.get("wall_time_s"), summary.get("source_sha256"), key),
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
            r["run_dir"] = str(self.run_dir(r["key"]))  # absolute, whatever was recorded by older versions
        return rows

"""The results store: one SQLite file per run directory; a job's rows and its completion commit together."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    finished REAL,
    seconds REAL,
    worker TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rows (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS rows_by_table ON rows(tbl);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """Job states and result rows of one study run; safe against a kill at any moment (SQLite transactions)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path} is a directory, not a results store")
        try:
            self.connection = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable results store ({exc})") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # disk full, read-only file system, I/O error: nothing was committed
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise UserError(f"cannot write the results store {self.path}: {exc}") from None

    def add_jobs(self, jobs: Iterable[tuple[str, str, Mapping[str, Any]]]) -> int:
        """Register (id, kind, spec) jobs not yet known; return how many were new."""
        with self.transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO jobs (id, kind, spec) VALUES (?, ?, ?)",
                [(job_id, kind, json.dumps(spec, sort_keys=True, default=str)) for job_id, kind, spec in jobs],
            )
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] - before

    def status(self, job_id: str) -> str | None:
        """A job's status, or None if unknown."""
        row = self.connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def done_ids(self) -> set[str]:
        """Ids of finished jobs."""
        return {row[0] for row in self.connection.execute("SELECT id FROM jobs WHERE status = 'done'")}

    def complete(self, job_id: str, rows: Sequence[tuple[str, Mapping[str, Any]]], seconds: float,
                 worker: str = "local") -> bool:
        """Store a job's (table, row) results and mark it done in one transaction; False if it was already done."""
        with self.transaction() as db:
            current = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if current is None:
                raise KeyError(job_id)
            if current[0] == "done":
                return False
            db.execute("DELETE FROM rows WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO rows (job_id, seq, tbl, data) VALUES (?, ?, ?, ?)",
                [(job_id, seq, table, json.dumps(row, default=str)) for seq, (table, row) in enumerate(rows)],
            )
            db.execute(
                "UPDATE jobs SET status = 'done', finished = ?, seconds = ?, worker = ?, error = NULL WHERE id = ?",
                (time.time(), seconds, worker, job_id),
            )
        return True

    def fail(self, job_id: str, error: str) -> None:
        """Record a failed job (retried on the next run)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = 'failed', error = ?, finished = ? WHERE id = ?", (error[:2000], time.time(), job_id))

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every stored row of a result table, in job then row order."""
        cursor = self.connection.execute(
            "SELECT r.data FROM rows r JOIN jobs j ON j.id = r.job_id WHERE r.tbl = ? AND j.status = 'done' ORDER BY r.job_id, r.seq",
            (table,),
        )
        return [json.loads(data) for (data,) in cursor]

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with its state."""
        cursor = self.connection.execute("SELECT id, kind, spec, status, worker, seconds, error FROM jobs ORDER BY id")
        return [
            {"id": i, "kind": k, "spec": json.loads(s), "status": st, "worker": w, "seconds": sec, "error": e}
            for i, k, s, st, w, sec, e in cursor
        ]

    def tables(self) -> list[str]:
        """Names of result tables that hold rows."""
        return [row[0] for row in self.connection.execute("SELECT DISTINCT tbl FROM rows ORDER BY tbl")]

    def set_meta(self, key: str, value: Any) -> None:
        """Store a metadata value (JSON)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def meta(self, key: str, default: Any = None) -> Any:
        """Read a metadata value."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

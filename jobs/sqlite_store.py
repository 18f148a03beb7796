"""Job store on SQLite (the embedded one-command mode: no server to run).

Gateway and worker are separate processes sharing one database file; WAL mode lets readers run while
one writer commits, and every compare-and-set runs inside `BEGIN IMMEDIATE` so it holds the write lock.
A job's events (`jobs.events`) are rows of the `events` table, written in the same transaction as the
change they record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.events import MAX_EVENTS, status_event
from jobs.record import (
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    JobStore,
    StoreUnavailable,
    decode_cursor,
    dumps,
    encode_cursor,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  status TEXT NOT NULL,
  created_us INTEGER NOT NULL,
  expires_at REAL,
  finished_at REAL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS idempotency (
  owner TEXT NOT NULL,
  key TEXT NOT NULL,
  job_id TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  expires_at REAL NOT NULL,
  PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS locks (
  name TEXT PRIMARY KEY,
  expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS workers (
  id TEXT PRIMARY KEY,
  info TEXT NOT NULL,
  expires_at REAL NOT NULL
);
"""


class SqliteJobStore(JobStore):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._db().executescript(_SCHEMA)  # executescript manages its own transaction
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"job store unusable: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"job store unusable: {exc}") from exc
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise StoreUnavailable(f"job store unusable: {exc}") from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"job store unusable: {exc}") from exc

    @staticmethod
    def _row(job: JobRecord) -> tuple[Any, ...]:
        return (
            job.owner,
            str(job.status),
            job.created_us,
            job.expires_at,
            job.finished_at,
            dumps(job.to_fields()),
            job.id,
        )

    def create(self, job: JobRecord, idempotency_ttl_s: int) -> tuple[JobRecord, bool]:
        with self._tx() as db:
            if job.idempotency_key:
                row = db.execute(
                    "SELECT job_id, request_hash FROM idempotency WHERE owner=? AND key=? AND expires_at>?",
                    (job.owner, job.idempotency_key, time.time()),
                ).fetchone()
                if row is not None:
                    if row[1] != job.request_hash:
                        raise IdempotencyConflict(row[0])
                    old = db.execute("SELECT data FROM jobs WHERE id=?", (row[0],)).fetchone()
                    if old is not None:
                        return JobRecord.from_fields(json.loads(old[0])), False
                db.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (
                        job.owner,
                        job.idempotency_key,
                        job.id,
                        job.request_hash,
                        time.time() + idempotency_ttl_s,
                    ),
                )
            db.execute(
                "INSERT INTO jobs (owner, status, created_us, expires_at, finished_at, data, id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                self._row(job),
            )
            self._add_event(db, job.id, status_event(str(job.status), job.created_at, {}))
        return job, True

    @staticmethod
    def _add_event(db: sqlite3.Connection, job_id: str, event: dict[str, Any]) -> None:
        db.execute("INSERT INTO events (job_id, data) VALUES (?, ?)", (job_id, dumps(event)))

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT data FROM jobs WHERE id=?", (job_id,))
        return JobRecord.from_fields(json.loads(rows[0][0])) if rows else None

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            db.execute("DELETE FROM events WHERE job_id=?", (job_id,))

    def compare_and_set(
        self,
        job_id: str,
        allowed: set[JobStatus] | frozenset[JobStatus],
        changes: dict[str, Any],
        expect: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            fields = json.loads(row[0])
            if JobStatus(fields["status"]) not in allowed:
                return None
            if any(fields.get(k) != v for k, v in (expect or {}).items()):
                return None
            fields.update({k: (str(v) if k == "status" else v) for k, v in changes.items()})
            job = JobRecord.from_fields(fields)
            db.execute(
                "UPDATE jobs SET owner=?, status=?, created_us=?, expires_at=?, finished_at=?, data=? WHERE id=?",
                self._row(job),
            )
            if event is not None and "status" in changes:
                self._add_event(db, job_id, event)
        return job

    def set_progress(self, job_ids: list[str], step: int, total: int) -> None:
        event = {"type": "progress", "stage": "sampling", "step": step, "total": total, "at": time.time()}
        with self._tx() as db:
            for job_id in job_ids:
                db.execute(
                    "UPDATE jobs SET data=json_set(data, '$.progress', json(?)) WHERE id=?",
                    (dumps({"step": step, "total": total}), job_id),
                )
                if db.execute("SELECT 1 FROM jobs WHERE id=? AND status='running'", (job_id,)).fetchone():
                    self._add_event(db, job_id, event)
                    db.execute(
                        "DELETE FROM events WHERE job_id=? AND seq <= (SELECT seq FROM events WHERE job_id=?"
                        " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                        (job_id, job_id, MAX_EVENTS),
                    )

    def update_webhook(self, job_id: str, webhook: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET data=json_set(data, '$.webhook', json(?)) WHERE id=?",
                (dumps(webhook), job_id),
            )

    def list_jobs(
        self, owner: str, status: JobStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        sql = "SELECT data FROM jobs WHERE owner=?"
        args: list[Any] = [owner]
        if status is not None:
            sql += " AND status=?"
            args.append(str(status))
        if cursor:
            us, last_id = decode_cursor(cursor)
            sql += " AND (created_us < ? OR (created_us = ? AND id < ?))"
            args += [us, us, last_id]
        sql += " ORDER BY created_us DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        jobs = [JobRecord.from_fields(json.loads(r[0])) for r in self._read(sql, tuple(args))]
        page = jobs[:limit]
        next_cursor = encode_cursor(page[-1].created_us, page[-1].id) if len(jobs) > limit else None
        return page, next_cursor

    def held_jobs(self) -> list[JobRecord]:
        rows = self._read("SELECT data FROM jobs WHERE status IN ('preparing', 'running')")
        return [JobRecord.from_fields(json.loads(r[0])) for r in rows]

    def queued_jobs(self) -> list[JobRecord]:
        rows = self._read("SELECT data FROM jobs WHERE status='queued' ORDER BY created_us")
        return [JobRecord.from_fields(json.loads(r[0])) for r in rows]

    def try_lock(self, name: str, ttl_s: float) -> bool:
        t = time.time()
        with self._tx() as db:
            row = db.execute("SELECT expires_at FROM locks WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] > t:
                return False
            db.execute("INSERT OR REPLACE INTO locks VALUES (?, ?)", (name, t + ttl_s))
        return True

    def queued_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE status='queued'")[0][0])

    def due_for_expiry(self, at: float, limit: int = 100) -> list[JobRecord]:
        rows = self._read(
            "SELECT data FROM jobs WHERE status='succeeded' AND expires_at<=? ORDER BY expires_at LIMIT ?",
            (at, limit),
        )
        return [JobRecord.from_fields(json.loads(r[0])) for r in rows]

    def purge_records(self, before: float) -> int:
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at<?", (before,))
            db.execute("DELETE FROM events WHERE job_id NOT IN (SELECT id FROM jobs)")
            db.execute("DELETE FROM idempotency WHERE expires_at<?", (time.time(),))
            db.execute("DELETE FROM workers WHERE expires_at<?", (time.time(),))
        return cur.rowcount

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
                (worker_id, dumps(info), time.time() + ttl_s),
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id=?", (worker_id,))

    def live_workers(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT info FROM workers WHERE expires_at>?", (time.time(),))
        return [json.loads(r[0]) for r in rows]

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

"""The job contract that the gateway (`service`) and the workers (`worker`) share.

`record` (the job, its statuses, the store interface), `lifecycle` (every legal status change, each a
named compare-and-set), the stores (Redis in production, SQLite in the embedded mode), `storage` (where
uploads and results live), `queue` (the task name and broker options) and `settings` (what both sides
must agree on). It imports neither deployable, and no torch.
"""

from __future__ import annotations

from jobs.record import (
    TERMINAL,
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    JobStore,
    StoreUnavailable,
    owner_id,
)

__all__ = [
    "TERMINAL",
    "IdempotencyConflict",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "StoreUnavailable",
    "open_store",
    "owner_id",
]


def open_store(url: str, prefix: str = "diffv2s", record_ttl_s: int = 7 * 24 * 3600) -> JobStore:
    """`redis://host:port/db` or `sqlite:///relative.sqlite3` / `sqlite:////absolute.sqlite3`."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from jobs.redis_store import RedisJobStore

        return RedisJobStore(url, prefix=prefix, record_ttl_s=record_ttl_s)
    if url.startswith("sqlite:///"):
        from jobs.sqlite_store import SqliteJobStore

        return SqliteJobStore(url[len("sqlite:///") :])
    raise ValueError(f"unsupported job store URL {url!r}: use redis://... or sqlite:///path")

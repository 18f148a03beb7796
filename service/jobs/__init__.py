"""Job records and the stores that hold them: Redis in production, SQLite in the embedded mode."""

from __future__ import annotations

from service.jobs.record import (
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
        from service.jobs.redis_store import RedisJobStore

        return RedisJobStore(url, prefix=prefix, record_ttl_s=record_ttl_s)
    if url.startswith("sqlite:///"):
        from service.jobs.sqlite_store import SqliteJobStore

        return SqliteJobStore(url[len("sqlite:///") :])
    raise ValueError(f"unsupported job store URL {url!r}: use redis://... or sqlite:///path")

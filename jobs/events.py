"""A job's event log: every status change and sampling progress, in order, readable by any gateway process.

Writers are the stores, inside the same atomic step as the change they record: `create` appends the
first `queued` event, `compare_and_set` (called only by `jobs.lifecycle`) appends a `status` event when
the status changes, `set_progress` appends a `progress` event while the job runs. So an event is never
lost or written for a change that did not happen, and every gateway process reads the same log:

- Redis: one Stream per job (`{prefix}:events:{id}`), capped at `MAX_EVENTS` entries, expiring with the
  job's record; event ids are the stream ids (`1712345678901-0`).
- SQLite (embedded mode): the `events` table, one row per event; event ids are its row numbers.

Readers (`EventReader`, async) wait for events after a given id, so a client that reconnects with the
last id it saw (`Last-Event-ID`) gets the rest without loss or repeats.

Stored event data: `{"type": "status", "status", "at", "error"?}` or
`{"type": "progress", "stage": "sampling", "step", "total", "at"}`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Most events kept per job (a stream is trimmed to about this many; progress is throttled by the worker).
MAX_EVENTS = 1000


def events_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:events:{job_id}"


@dataclass(frozen=True)
class JobEvent:
    id: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", "status"))


class EventReader(ABC):
    """Reads a job's events after a given event id (None: from the first)."""

    @abstractmethod
    def valid_id(self, event_id: str) -> bool:
        """Whether `event_id` has the form of this log's event ids (a client's Last-Event-ID)."""

    @abstractmethod
    async def read(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        """Events after `after`, oldest first; waits up to `timeout_s` for one (empty list on timeout)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class RedisEventReader(EventReader):
    """Blocking XREAD on the job's stream (one connection per reader: open one per waiting client)."""

    _ID = re.compile(r"^\d{1,20}-\d{1,20}$")

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio

        self.r = redis.asyncio.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)
        self.prefix = prefix

    def valid_id(self, event_id: str) -> bool:
        return bool(self._ID.match(event_id))

    async def read(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        key = events_key(self.prefix, job_id)
        block = max(1, int(timeout_s * 1000))
        reply = await self.r.xread({key: after or "0-0"}, count=100, block=block)
        out: list[JobEvent] = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                out.append(JobEvent(event_id, json.loads(fields["data"])))
        return out

    async def close(self) -> None:
        await self.r.aclose()


class SqliteEventReader(EventReader):
    """Polls the `events` table (SQLite has no blocking read; a poll is one indexed query)."""

    def __init__(self, path: Path | str, poll_s: float = 0.2) -> None:
        self.path = Path(path)
        self.poll_s = poll_s

    def valid_id(self, event_id: str) -> bool:
        return event_id.isdigit() and len(event_id) < 20

    def _query(self, job_id: str, after: int) -> list[JobEvent]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            rows = db.execute(
                "SELECT seq, data FROM events WHERE job_id=? AND seq>? ORDER BY seq LIMIT 100",
                (job_id, after),
            ).fetchall()
        except sqlite3.OperationalError:  # no table yet: no store wrote an event
            rows = []
        finally:
            db.close()
        return [JobEvent(str(seq), json.loads(data)) for seq, data in rows]

    async def read(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        start = int(after) if after else 0
        while True:
            events = await asyncio.to_thread(self._query, job_id, start)
            if events or loop.time() >= deadline:
                return events
            await asyncio.sleep(min(self.poll_s, max(0.0, deadline - loop.time())))


def open_event_reader(store_url: str, prefix: str = "diffv2s") -> EventReader:
    """The reader for the job store at `store_url` (see `jobs.open_store`)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisEventReader(store_url, prefix)
    if store_url.startswith("sqlite:///"):
        return SqliteEventReader(store_url[len("sqlite:///") :])
    raise ValueError(f"unsupported job store URL {store_url!r}")


def is_event_id(store_url: str, event_id: str) -> bool:
    """Whether `event_id` (a client's Last-Event-ID) has the form of the store's event ids."""
    if store_url.startswith("sqlite:///"):
        return event_id.isdigit() and len(event_id) < 20
    return bool(RedisEventReader._ID.match(event_id))


def status_event(status: str, at: float, changes: dict[str, Any]) -> dict[str, Any]:
    """The stored data of a status change (with the error of a failure)."""
    event: dict[str, Any] = {"type": "status", "status": status, "at": at}
    if changes.get("error"):
        event["error"] = changes["error"]
    return event

"""GET /v1/jobs/{id}/events: a job's status changes and sampling progress as Server-Sent Events.

Served with Starlette's `StreamingResponse` (no extra dependency; Starlette cancels the stream when the
client disconnects). The events come from the job's event log in the job store (`jobs.events`: a Redis
Stream per job, or the SQLite `events` table in the embedded mode), never from process memory, so any
gateway process serves any job, and a client that reconnects with `Last-Event-ID` gets every event after
that one exactly once. Without `Last-Event-ID` the stream starts with the job's first event (`queued`).

```
id: 1765123456789-0
event: status
data: {"status": "running", "at": 1765123456.78}

id: 1765123457012-0
event: progress
data: {"stage": "sampling", "step": 1, "total": 2, "at": 1765123457.01}
```

The stream ends after the terminal status event (`succeeded`, `failed`, `canceled`), whose data also
carries the whole job (`job`, as `GET /v1/jobs/{id}` returns it). While nothing happens, a comment line
keeps the connection open every `events_keepalive_s`, and the job record is re-read, so a stream whose
log expired still ends (with a status event without an id); a client that resumes after the terminal
event gets an empty stream.

`wait_for_end` is the same wait for the blocking mode of `POST /v1/synthesize` (`Prefer: wait=N`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from diffv2s.errors import InvalidParameter
from jobs import TERMINAL, JobRecord, JobStatus, JobStore
from jobs.events import EventReader, is_event_id, open_event_reader
from service.api.routes.jobs import _own_job
from service.deps import OwnerDep, SettingsDep, StoreDep
from service.errors import error_responses
from service.schemas import Job
from service.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_TERMINAL_NAMES = {str(s) for s in TERMINAL if s != JobStatus.EXPIRED}

_EVENTS_DOC = {
    200: {
        "description": "A stream of `status` and `progress` events; ends after the terminal status.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **error_responses(401, 404, 422, 503),
}


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _payload(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "type"}


def reader_for(settings: Settings) -> EventReader:
    """One reader per waiting client: a blocking Redis read holds its connection while it waits."""
    return open_event_reader(settings.store_url, settings.store_prefix)


async def _job(store: JobStore, job_id: str) -> JobRecord | None:
    return await run_in_threadpool(store.get, job_id)


async def _stream(
    settings: Settings, store: JobStore, job_id: str, after: str | None
) -> AsyncIterator[bytes]:
    reader = reader_for(settings)
    try:
        yield b"retry: 1000\n\n"
        # A short first look, so the stream of a job that already ended finishes at once.
        timeout, ended = 0.05, False
        while True:
            events = await reader.read(job_id, after, timeout)
            for ev in events:
                after = ev.id
                data = _payload(ev.data)
                if ev.type == "status" and data.get("status") in _TERMINAL_NAMES:
                    job = await _job(store, job_id)
                    if job is not None:
                        data["job"] = Job.from_record(job).model_dump(mode="json")
                    yield _sse("status", data, ev.id)
                    return
                yield _sse(ev.type, data, ev.id)
            if events:
                continue
            if ended:
                # The job ended and no terminal event follows `after`: the client saw it already (the
                # terminal event is a log's last), or the log is gone: then say how the job ended.
                job = await _job(store, job_id)
                if after is None and job is not None:
                    end = {"status": str(job.status), "at": job.finished_at}
                    yield _sse("status", end | {"job": Job.from_record(job).model_dump(mode="json")})
                return
            job = await _job(store, job_id)
            if job is None or job.status in TERMINAL:
                # Read once more without waiting: the end may have been written since the read above.
                timeout, ended = 0.001, True
                continue
            if timeout == settings.events_keepalive_s:
                yield b": keepalive\n\n"
            timeout = settings.events_keepalive_s
    finally:
        await asyncio.shield(reader.close())


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses=_EVENTS_DOC,  # type: ignore[arg-type]
    summary="Live status and progress of a job (Server-Sent Events)",
    operation_id="getJobEvents",
)
async def job_events(
    job_id: str,
    owner: OwnerDep,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=64,
            description="Resume after this event (browsers send it when they reconnect).",
        ),
    ] = None,
) -> StreamingResponse:
    await run_in_threadpool(_own_job, store, owner, job_id)
    if last_event_id is not None and not is_event_id(settings.store_url, last_event_id):
        raise InvalidParameter("Last-Event-ID: not an event id of this job's stream")
    return StreamingResponse(
        _stream(settings, store, job_id, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def wait_for_end(
    settings: Settings, store: JobStore, job_id: str, timeout_s: float
) -> JobRecord | None:
    """The job once it reached a terminal status, or None when `timeout_s` passed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    reader = reader_for(settings)
    after: str | None = None
    try:
        while (left := deadline - loop.time()) > 0:
            events = await reader.read(job_id, after, min(left, settings.events_keepalive_s))
            if events:
                after = events[-1].id
            if not events or any(e.data.get("status") in _TERMINAL_NAMES for e in events):
                job = await _job(store, job_id)
                if job is None or job.status in TERMINAL:
                    return job
        return None
    finally:
        await asyncio.shield(reader.close())

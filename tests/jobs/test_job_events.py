"""A job's event log (`jobs.events`) on both real stores: every status change and progress step, in order,
resumable from any event id, written atomically with the change it records."""

from __future__ import annotations

import asyncio
import time
import uuid

from jobs import JobRecord, JobStatus, JobStore, lifecycle
from jobs.events import EventReader, JobEvent, RedisEventReader, SqliteEventReader
from jobs.redis_store import RedisJobStore
from jobs.sqlite_store import SqliteJobStore


def make_job(**kw: object) -> JobRecord:
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "owner": "owner-a",
        "status": JobStatus.QUEUED,
        "created_at": time.time(),
        "params": {"sampler": None, "steps": None, "seed": 0, "guidance": 0.0, "cfg_scale": None},
        "output": "wav",
        "input_key": "inputs/x.mp4",
    }
    return JobRecord(**(fields | kw))  # type: ignore[arg-type]


def reader_for(store: JobStore) -> EventReader:
    if isinstance(store, RedisJobStore):
        url = store.r.connection_pool.connection_kwargs
        return RedisEventReader(f"redis://{url['host']}:{url['port']}/{url['db']}", store.p)
    assert isinstance(store, SqliteJobStore)
    return SqliteEventReader(store.path, poll_s=0.05)


def read_all(store: JobStore, job_id: str, after: str | None = None) -> list[JobEvent]:
    async def go() -> list[JobEvent]:
        reader = reader_for(store)
        try:
            out: list[JobEvent] = []
            while batch := await reader.read(job_id, after if not out else out[-1].id, 0.05):
                out += batch
            return out
        finally:
            await reader.close()

    return asyncio.run(go())


def kinds(events: list[JobEvent]) -> list[str]:
    return [
        e.data["status"] if e.type == "status" else f"progress {e.data['step']}/{e.data['total']}"
        for e in events
    ]


def test_a_jobs_life_is_logged_in_order_and_resumes_from_any_event(job_store: JobStore) -> None:
    job, _ = job_store.create(make_job(), 60)
    claimed = lifecycle.claim(job_store, job.id, "w1")
    assert claimed is not None
    job_store.set_progress([job.id], 1, 2)  # preparing: progress is recorded but not logged
    assert lifecycle.start(job_store, job.id, claimed.lease) is not None
    job_store.set_progress([job.id], 1, 2)
    job_store.set_progress([job.id], 2, 2)
    assert lifecycle.succeed(job_store, job.id, 60, {"audio_key": "a.wav"}, claimed.lease) is not None
    job_store.set_progress([job.id], 2, 2)  # after the end: not logged

    events = read_all(job_store, job.id)
    assert kinds(events) == ["queued", "preparing", "running", "progress 1/2", "progress 2/2", "succeeded"]
    assert len({e.id for e in events}) == len(events)
    assert events[3].data["stage"] == "sampling"
    for cut in range(len(events)):
        assert read_all(job_store, job.id, events[cut].id) == events[cut + 1 :]


def test_refused_changes_write_no_event_and_failures_carry_their_error(job_store: JobStore) -> None:
    job, _ = job_store.create(make_job(), 60)
    assert lifecycle.start(job_store, job.id) is None  # queued -> running is not legal
    assert lifecycle.cancel(job_store, job.id).canceled
    assert lifecycle.cancel(job_store, job.id).canceled  # idempotent: no second event
    assert kinds(read_all(job_store, job.id)) == ["queued", "canceled"]

    other, _ = job_store.create(make_job(), 60)
    assert lifecycle.fail(job_store, other.id, "no_face", "no face found") is not None
    last = read_all(job_store, other.id)[-1]
    assert last.data["status"] == "failed" and last.data["error"]["code"] == "no_face"


def test_a_job_past_its_deadline_fails_from_the_queue_only(job_store: JobStore) -> None:
    future, _ = job_store.create(make_job(deadline_at=time.time() + 3600), 60)
    assert lifecycle.miss_deadline(job_store, future.id) is None
    past, _ = job_store.create(make_job(deadline_at=time.time() - 1), 60)
    done = lifecycle.miss_deadline(job_store, past.id)
    assert done is not None and done.status == JobStatus.FAILED
    assert done.error == {
        "code": "deadline_exceeded",
        "message": "no worker started the job before its deadline",
    }
    assert kinds(read_all(job_store, past.id)) == ["queued", "failed"]
    claimed_late, _ = job_store.create(make_job(deadline_at=time.time() + 0.05), 60)
    assert lifecycle.claim(job_store, claimed_late.id, "w1") is not None
    time.sleep(0.1)
    assert lifecycle.miss_deadline(job_store, claimed_late.id) is None  # a claimed job has started


def test_a_waiting_reader_wakes_when_the_event_is_written(job_store: JobStore) -> None:
    job, _ = job_store.create(make_job(), 60)
    first = read_all(job_store, job.id)

    async def go() -> list[JobEvent]:
        reader = reader_for(job_store)
        try:
            waiting = asyncio.create_task(reader.read(job.id, first[-1].id, 30.0))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await asyncio.to_thread(lifecycle.cancel, job_store, job.id)
            return await asyncio.wait_for(waiting, 30.0)
        finally:
            await reader.close()

    assert kinds(asyncio.run(go())) == ["canceled"]


def test_the_event_log_is_removed_with_the_job(job_store: JobStore) -> None:
    job, _ = job_store.create(make_job(), 60)
    job_store.delete(job.id)
    assert read_all(job_store, job.id) == []

"""The recovery watchdog (`jobs.recovery`) on both real stores and a real Redis broker: jobs of dead
workers, jobs a live worker lost, and queued jobs whose message is gone go back to the queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import JobRecord, JobStatus, JobStore, lifecycle
from jobs.queue import JobPublisher
from jobs.recovery import LOCK_NAME, recover_jobs
from jobs.settings import CommonSettings
from jobs.storage import LocalStorage

S = JobStatus
GRACE_S = 5.0


def make_job(**kw: object) -> JobRecord:
    job_id = str(uuid.uuid4())
    fields: dict[str, object] = {
        "owner": "owner-a",
        "status": S.QUEUED,
        "created_at": time.time(),
        "params": {"steps": 2},
        "output": "wav",
        "input_key": f"inputs/{job_id}.mp4",
    }
    return JobRecord(id=job_id, **(fields | kw))  # type: ignore[arg-type]


@pytest.fixture
def publisher(redis_url: str, rdb: object) -> Iterator[JobPublisher]:
    p = JobPublisher(CommonSettings(broker_url=redis_url, queue_name=f"recovery-{uuid.uuid4().hex[:8]}"))
    yield p
    p.close()


def held_by(store: JobStore, worker: str, status: JobStatus = S.RUNNING, attempts: int = 0) -> JobRecord:
    job = make_job(attempts=attempts)
    store.create(job, 60)
    claimed = lifecycle.claim(store, job.id, worker)
    assert claimed is not None
    if status == S.RUNNING:
        claimed = lifecycle.start(store, job.id, lease=claimed.lease)
    assert claimed is not None
    return claimed


def beat(store: JobStore, worker: str, jobs: list[str], at: float | None = None) -> None:
    info = {"id": worker, "jobs": jobs, "beat_at": time.time() if at is None else at}
    store.heartbeat(worker, info, ttl_s=30)


def recover(store: JobStore, publisher: JobPublisher, storage: LocalStorage | None = None, **kw: float):  # type: ignore[no-untyped-def]
    return recover_jobs(
        store,
        publisher,
        max_attempts=3,
        lost_message_grace_s=GRACE_S,
        clock_margin_s=0.5,
        storage=storage,
        **kw,
    )


def test_a_dead_workers_jobs_are_requeued_and_republished_and_a_live_workers_are_left_alone(
    job_store: JobStore, publisher: JobPublisher
) -> None:
    running = held_by(job_store, "dead:1")
    preparing = held_by(job_store, "dead:1", S.PREPARING)
    live = held_by(job_store, "live:2")
    beat(job_store, "live:2", [live.id])

    report = recover(job_store, publisher)

    assert sorted(report.requeued["worker_lost"]) == sorted([running.id, preparing.id])
    for job in (running, preparing):
        back = job_store.get(job.id)
        assert back is not None and back.status == S.QUEUED and back.attempts == 1
        assert back.worker is None and back.lease is None
    assert job_store.get(live.id).status == S.RUNNING  # type: ignore[union-attr]
    assert publisher.waiting_ids() == {running.id, preparing.id}
    # The dead worker, were it to come back, cannot finish its old job.
    assert lifecycle.succeed(job_store, running.id, 60, {}, lease=running.lease) is None
    # A second pass finds nothing more to do (the messages wait in the broker now).
    assert recover(job_store, publisher, at=time.time() + 2 * GRACE_S).count() == 0


def test_a_job_whose_workers_keep_dying_fails_with_worker_lost(
    job_store: JobStore, publisher: JobPublisher, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    job = held_by(job_store, "dead:1", attempts=2)
    with storage.writer(job.input_key) as f:
        f.write(b"video")

    report = recover(job_store, publisher, storage)

    assert report.failed == [job.id]
    failed = job_store.get(job.id)
    assert failed is not None and failed.status == S.FAILED
    assert failed.error is not None and failed.error["code"] == "worker_lost"
    assert not storage.exists(job.input_key)
    assert publisher.waiting_ids() == set()


def test_a_job_its_live_worker_no_longer_lists_is_orphaned_and_requeued(
    job_store: JobStore, publisher: JobPublisher
) -> None:
    lost = held_by(job_store, "live:1")
    fresh = held_by(job_store, "live:1")
    assert lost.claimed_at is not None and fresh.claimed_at is not None
    # A beat written after both claims lists neither: the first was claimed well before it, the
    # second within the clock margin (the beat may have been prepared before the claim).
    beat(job_store, "live:1", [], at=fresh.claimed_at + 0.2)
    job_store.compare_and_set(lost.id, {S.RUNNING}, {"claimed_at": fresh.claimed_at - 5})

    report = recover(job_store, publisher)

    assert report.requeued == {"orphaned": [lost.id]}
    assert job_store.get(fresh.id).status == S.RUNNING  # type: ignore[union-attr]


def test_a_queued_job_with_no_message_is_republished_after_the_grace_only(
    job_store: JobStore, publisher: JobPublisher
) -> None:
    now = time.time()
    lost = make_job(created_at=now - 3 * GRACE_S)  # a gateway died between the record and the publish
    waiting = make_job(created_at=now - 3 * GRACE_S)  # its message waits behind others
    young = make_job(created_at=now)  # its gateway may be publishing right now
    for job in (lost, waiting, young):
        job_store.create(job, 60)
    publisher.publish(waiting.id)

    report = recover(job_store, publisher)

    assert report.requeued == {"message_lost": [lost.id]}
    assert publisher.waiting_ids() == {lost.id, waiting.id}
    again = job_store.get(lost.id)
    assert again is not None and again.status == S.QUEUED and again.queued_at is not None
    assert again.queued_at >= now
    # Republished just now: not again within the grace.
    assert recover(job_store, publisher).count() == 0


def test_the_watchdog_lock_admits_one_holder_until_it_expires(job_store: JobStore) -> None:
    assert job_store.try_lock(LOCK_NAME, 0.3)
    assert not job_store.try_lock(LOCK_NAME, 0.3)
    time.sleep(0.4)
    assert job_store.try_lock(LOCK_NAME, 0.3)


def test_the_sql_transport_queue_is_read_too(tmp_path: Path) -> None:
    p = JobPublisher(CommonSettings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"))
    try:
        assert p.waiting_ids() == set()
        p.publish("job-1")
        assert p.waiting_ids() == {"job-1"}
    finally:
        p.close()


def test_a_queued_job_whose_message_a_live_worker_reserved_is_not_republished(
    job_store: JobStore, publisher: JobPublisher
) -> None:
    job = make_job(created_at=time.time() - 3 * GRACE_S)
    job_store.create(job, 60)
    job_store.heartbeat(
        "live:1", {"id": "live:1", "jobs": [], "reserved": [job.id], "beat_at": time.time()}, 30
    )
    assert recover(job_store, publisher).count() == 0
    assert publisher.waiting_ids() == set()

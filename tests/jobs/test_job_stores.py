"""The JobStore contract, run against both real backends: Redis (production) and SQLite (embedded)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from jobs import IdempotencyConflict, JobRecord, JobStatus, JobStore


def make_job(owner: str = "owner-a", created: float | None = None, **kw: object) -> JobRecord:
    return JobRecord(
        id=str(uuid.uuid4()),
        owner=owner,
        status=JobStatus.QUEUED,
        created_at=time.time() if created is None else created,
        params={"sampler": "dpmpp", "steps": 4, "seed": 0, "guidance": 0.0, "cfg_scale": 1.0},
        output="wav",
        input_key="inputs/x.mp4",
        **kw,  # type: ignore[arg-type]
    )


def test_create_get_roundtrip(job_store: JobStore) -> None:
    job = make_job(request_hash="h1", video_seconds=2.5)
    stored, created = job_store.create(job, 60)
    assert created and stored == job
    assert job_store.get(job.id) == job
    assert job_store.get(str(uuid.uuid4())) is None
    assert job_store.queued_count() == 1


def test_transitions_are_compare_and_set(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job, 60)
    running = job_store.compare_and_set(
        job.id, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING, "worker": "w1"}
    )
    assert running is not None and running.status == JobStatus.RUNNING and running.worker == "w1"
    assert job_store.queued_count() == 0
    # A cancel that arrives after the start loses the race and changes nothing.
    assert job_store.compare_and_set(job.id, {JobStatus.QUEUED}, {"status": JobStatus.CANCELED}) is None
    assert job_store.get(job.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
    assert (
        job_store.compare_and_set(str(uuid.uuid4()), {JobStatus.QUEUED}, {"status": JobStatus.RUNNING})
        is None
    )
    done = job_store.compare_and_set(
        job.id,
        {JobStatus.RUNNING},
        {
            "status": JobStatus.SUCCEEDED,
            "timings": {"total": 1.5},
            "error": None,
            "expires_at": time.time() + 60,
        },
    )
    assert done is not None and done.timings == {"total": 1.5}


def test_only_one_of_many_racing_transitions_wins(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job, 60)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        if job_store.compare_and_set(
            job.id, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING, "worker": f"w{i}"}
        ):
            wins.append(f"w{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert job_store.get(job.id).worker == wins[0]  # type: ignore[union-attr]


def test_idempotency_key_replays_or_conflicts_per_owner(job_store: JobStore) -> None:
    first = make_job(idempotency_key="k", request_hash="same")
    assert job_store.create(first, 60) == (first, True)
    replay, created = job_store.create(make_job(idempotency_key="k", request_hash="same"), 60)
    assert not created and replay.id == first.id
    with pytest.raises(IdempotencyConflict) as exc:
        job_store.create(make_job(idempotency_key="k", request_hash="other"), 60)
    assert exc.value.job_id == first.id
    other_owner = make_job(owner="owner-b", idempotency_key="k", request_hash="other")
    assert job_store.create(other_owner, 60)[1] is True
    assert job_store.queued_count() == 2
    # Deleting a job frees its key.
    job_store.delete(first.id)
    assert job_store.get(first.id) is None
    assert job_store.create(make_job(idempotency_key="k", request_hash="other"), 60)[1] is True


def test_list_pages_newest_first_with_ties_and_status_filter(job_store: JobStore) -> None:
    t = time.time()
    # Three jobs share one timestamp: the cursor must still visit each exactly once.
    jobs = [make_job(created=t + (i if i < 5 else 5)) for i in range(8)]
    for j in jobs:
        job_store.create(j, 60)
    job_store.create(make_job(owner="someone-else", created=t + 100), 60)
    for j in jobs[:3]:
        job_store.compare_and_set(j.id, {JobStatus.QUEUED}, {"status": JobStatus.CANCELED})

    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_us, j.id), reverse=True)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = job_store.list_jobs("owner-a", None, 3, cursor)
        assert len(page) <= 3
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == expected
    canceled, nxt = job_store.list_jobs("owner-a", JobStatus.CANCELED, 10, None)
    assert {j.id for j in canceled} == {j.id for j in jobs[:3]} and nxt is None
    assert job_store.list_jobs("nobody", None, 10, None) == ([], None)


def test_progress_and_expiry_candidates(job_store: JobStore) -> None:
    live, old = make_job(), make_job()
    for j in (live, old):
        job_store.create(j, 60)
        job_store.compare_and_set(j.id, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING})
    job_store.set_progress([live.id, old.id, str(uuid.uuid4())], 3, 8)
    assert job_store.get(live.id).progress == {"step": 3, "total": 8}  # type: ignore[union-attr]
    now = time.time()
    job_store.compare_and_set(
        live.id, {JobStatus.RUNNING}, {"status": JobStatus.SUCCEEDED, "expires_at": now + 3600}
    )
    job_store.compare_and_set(
        old.id, {JobStatus.RUNNING}, {"status": JobStatus.SUCCEEDED, "expires_at": now - 1}
    )
    assert [j.id for j in job_store.due_for_expiry(now)] == [old.id]
    job_store.compare_and_set(old.id, {JobStatus.SUCCEEDED}, {"status": JobStatus.EXPIRED})
    assert job_store.due_for_expiry(now) == []


def test_worker_heartbeats_expire(job_store: JobStore) -> None:
    job_store.heartbeat("w1", {"id": "w1", "items": 3}, ttl_s=0.4)
    job_store.heartbeat("w2", {"id": "w2", "items": 0}, ttl_s=30)
    assert sorted(w["id"] for w in job_store.live_workers()) == ["w1", "w2"]
    time.sleep(0.5)
    assert [w["id"] for w in job_store.live_workers()] == ["w2"]
    job_store.remove_worker("w2")
    assert job_store.live_workers() == []
    job_store.ping()

"""The job state machine (`jobs.lifecycle`) on both real stores, and that nothing else changes a status."""

from __future__ import annotations

import ast
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs import JobRecord, JobStatus, JobStore, lifecycle

S = JobStatus
ROOT = Path(__file__).resolve().parents[2]


def make_job(status: JobStatus) -> JobRecord:
    return JobRecord(
        id=str(uuid.uuid4()),
        owner="owner-a",
        status=status,
        created_at=time.time(),
        params={"sampler": None, "steps": None, "seed": 0, "guidance": 0.0, "cfg_scale": None},
        output="wav",
        input_key="inputs/x.mp4",
    )


def _cancel(store: JobStore, job_id: str) -> JobRecord | None:
    out = lifecycle.cancel(store, job_id)
    return out.job if out.canceled else None


# Each named transition, as (target status, call).
MOVES: dict[str, tuple[JobStatus, Callable[[JobStore, str], JobRecord | None]]] = {
    "claim": (S.PREPARING, lambda st, i: lifecycle.claim(st, i, "w1")),
    "start": (S.RUNNING, lifecycle.start),
    "succeed": (S.SUCCEEDED, lambda st, i: lifecycle.succeed(st, i, 60, {"audio_key": "results/x.wav"})),
    "fail": (S.FAILED, lambda st, i: lifecycle.fail(st, i, "no_face_found", "no face")),
    "requeue": (S.QUEUED, lambda st, i: lifecycle.requeue(st, i, 1)),
    "expire": (S.EXPIRED, lifecycle.expire),
    "cancel": (S.CANCELED, _cancel),
}

# The diagram of the module docstring, written out independently of lifecycle.LEGAL.
EXPECTED_FROM = {
    "claim": {S.QUEUED},
    "start": {S.PREPARING},
    "succeed": {S.RUNNING},
    "fail": {S.QUEUED, S.PREPARING, S.RUNNING},
    "requeue": {S.PREPARING, S.RUNNING},
    "expire": {S.SUCCEEDED},
    "cancel": {S.QUEUED, S.PREPARING, S.CANCELED},  # cancel of a canceled job answers it again
}


@pytest.mark.parametrize("name", sorted(MOVES))
@pytest.mark.parametrize("start_status", list(JobStatus))
def test_each_named_transition_is_taken_from_its_legal_statuses_only(
    job_store: JobStore, name: str, start_status: JobStatus
) -> None:
    job = make_job(start_status)
    job_store.create(job, 60)
    target, move = MOVES[name]
    done = move(job_store, job.id)
    after = job_store.get(job.id)
    assert after is not None
    if start_status in EXPECTED_FROM[name]:
        assert done is not None and done.status == target and after.status == target
    else:
        assert done is None
        assert after.status == start_status  # a refused move changes nothing


def test_claim_records_the_worker_and_start_the_start_time(job_store: JobStore) -> None:
    job = make_job(S.QUEUED)
    job_store.create(job, 60)
    claimed = lifecycle.claim(job_store, job.id, "host:42")
    assert claimed is not None and claimed.worker == "host:42" and claimed.started_at is None
    assert job_store.queued_count() == 0  # a preparing job no longer counts against the queue depth
    started = lifecycle.start(job_store, job.id)
    assert started is not None and started.started_at is not None


def test_cancel_of_a_queued_job_frees_its_input_and_of_a_preparing_job_leaves_it_to_the_worker(
    job_store: JobStore,
) -> None:
    queued = make_job(S.QUEUED)
    job_store.create(queued, 60)
    out = lifecycle.cancel(job_store, queued.id)
    assert out.canceled and out.delete_input and out.job is not None and out.job.status == S.CANCELED

    held = make_job(S.QUEUED)
    job_store.create(held, 60)
    assert lifecycle.claim(job_store, held.id, "w1") is not None
    out = lifecycle.cancel(job_store, held.id)
    assert out.canceled and not out.delete_input  # the worker reading the video deletes it itself
    # The holding worker's next step fails, so the model never runs a canceled job.
    assert lifecycle.start(job_store, held.id) is None
    assert job_store.get(held.id).status == S.CANCELED  # type: ignore[union-attr]

    again = lifecycle.cancel(job_store, held.id)
    assert again.canceled and not again.delete_input

    running = make_job(S.QUEUED)
    job_store.create(running, 60)
    lifecycle.claim(job_store, running.id, "w1")
    lifecycle.start(job_store, running.id)
    refused = lifecycle.cancel(job_store, running.id)
    assert not refused.canceled and refused.job is not None and refused.job.status == S.RUNNING


def test_requeue_clears_the_holder(job_store: JobStore) -> None:
    job = make_job(S.QUEUED)
    job_store.create(job, 60)
    lifecycle.claim(job_store, job.id, "w1")
    lifecycle.start(job_store, job.id)
    back = lifecycle.requeue(job_store, job.id, 1)
    assert back is not None and back.worker is None and back.started_at is None and back.attempts == 1
    assert job_store.queued_count() == 1


def test_the_legal_table_matches_the_documented_machine() -> None:
    for name, (target, _) in MOVES.items():
        legal = set(lifecycle.LEGAL[target])
        expected = EXPECTED_FROM[name] - {S.CANCELED} if name == "cancel" else EXPECTED_FROM[name]
        assert legal == expected, name


def _calls_of(attr: str, folder: str) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == attr:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_lifecycle_module_changes_a_status() -> None:
    """Gateway and worker go through the named transitions; a direct compare-and-set would bypass them."""
    for folder in ("service", "worker", "diffv2s", "model_export"):
        assert _calls_of("compare_and_set", folder) == [], folder
    inside = {c.split(":")[0] for c in _calls_of("compare_and_set", "jobs")}
    assert inside == {"jobs/lifecycle.py"}


def test_a_claim_takes_a_fresh_lease_and_only_that_lease_may_start_finish_or_hand_back(
    job_store: JobStore,
) -> None:
    job = make_job(S.QUEUED)
    job_store.create(job, 60)
    first = lifecycle.claim(job_store, job.id, "w1")
    assert first is not None and first.lease and first.claimed_at is not None
    assert lifecycle.start(job_store, job.id, lease="not-the-lease") is None
    assert lifecycle.start(job_store, job.id, lease=first.lease) is not None

    # Taken back (its worker declared dead) and claimed again by another worker under a new lease.
    back = lifecycle.requeue(job_store, job.id, 1, lease=first.lease)
    assert back is not None and back.lease is None and back.worker is None and back.queued_at is not None
    second = lifecycle.claim(job_store, job.id, "w2")
    assert second is not None and second.lease not in (None, first.lease)
    lifecycle.start(job_store, job.id, lease=second.lease)

    # The first worker comes back: it can neither finish, fail nor hand back the job.
    assert lifecycle.succeed(job_store, job.id, 60, {"audio_key": "x"}, lease=first.lease) is None
    assert lifecycle.fail(job_store, job.id, "internal_error", "x", lease=first.lease) is None
    assert lifecycle.requeue(job_store, job.id, 1, lease=first.lease) is None
    done = lifecycle.succeed(job_store, job.id, 60, {"audio_key": "y"}, lease=second.lease)
    assert done is not None and done.status == S.SUCCEEDED and done.audio_key == "y"


def test_mark_published_touches_only_a_queued_job(job_store: JobStore) -> None:
    job = make_job(S.QUEUED)
    job_store.create(job, 60)
    assert lifecycle.mark_published(job_store, job.id) is not None
    lifecycle.claim(job_store, job.id, "w1")
    assert lifecycle.mark_published(job_store, job.id) is None

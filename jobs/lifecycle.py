"""The job state machine: every legal status change is one named function here.

```
queued ──claim──► preparing ──start──► running ──succeed──► succeeded ──expire──► expired
  │                 │   ▲                 │
  │                 │   └───requeue───────┤            (a redelivered job whose worker died)
  ├──cancel─────────┴──cancel──► canceled │
  └──fail──── preparing, running ──fail───┴──► failed
```

- `claim` (worker task thread): the worker now holds the job and reads its input (decode, landmarks).
- `start` (worker model thread): the job enters a model batch.
- `cancel` (gateway): a queued job is canceled outright and nobody holds its input, so the caller may
  delete it. A preparing job is canceled cooperatively: the worker that holds it sees the status when
  `start` fails, drops the job and deletes the input itself, so the gateway never deletes a file a worker
  is reading. A running job cannot be canceled.
- `requeue` (the recovery watchdog, or a worker handing its jobs back at shutdown): a job whose worker
  died (heartbeat gone) or is stopping goes back to queued; a dead worker's job counts one more attempt.
- `miss_deadline` (a worker about to claim, or the watchdog): a queued job past its `deadline_at` fails
  with `deadline_exceeded` and never runs.
- `mark_published` (the sweeper): a queued job's message was published again; no status change.

Each function is a compare-and-set on the current status (`JobStore.compare_and_set`, a Lua script on
Redis, a transaction on SQLite), so two actors can race and exactly one wins; the loser gets None (or
`CancelOutcome.refused`). Nothing outside this module changes a job's status.

Fencing: `claim` gives the job a fresh `lease`. The holder's later writes (`start`, `succeed`, `fail`,
`requeue`) pass that lease and succeed only while the job still carries it, so a worker that was declared
dead and whose job went to another worker can neither start nor finish it a second time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from jobs.events import status_event
from jobs.record import JobRecord, JobStatus, JobStore, now

S = JobStatus

# target status -> the statuses it may be entered from
LEGAL: dict[JobStatus, frozenset[JobStatus]] = {
    S.PREPARING: frozenset({S.QUEUED}),
    S.RUNNING: frozenset({S.PREPARING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.QUEUED, S.PREPARING, S.RUNNING}),
    S.CANCELED: frozenset({S.QUEUED, S.PREPARING}),
    S.QUEUED: frozenset({S.PREPARING, S.RUNNING}),
    S.EXPIRED: frozenset({S.SUCCEEDED}),
}

# Statuses in which a worker holds the job (its input is in use, a redelivery means the worker died).
HELD = frozenset({S.PREPARING, S.RUNNING})


def _move(
    store: JobStore, job_id: str, to: JobStatus, changes: dict[str, Any], lease: str | None = None
) -> JobRecord | None:
    expect = {"lease": lease} if lease is not None else None
    event = status_event(str(to), now(), changes)
    return store.compare_and_set(job_id, LEGAL[to], {**changes, "status": to}, expect, event)


def claim(store: JobStore, job_id: str, worker_id: str) -> JobRecord | None:
    """queued -> preparing: `worker_id` holds the job from now on, under a fresh `lease`."""
    changes = {"worker": worker_id, "lease": uuid.uuid4().hex, "claimed_at": now(), "progress": None}
    return _move(store, job_id, S.PREPARING, changes)


def start(store: JobStore, job_id: str, lease: str | None = None) -> JobRecord | None:
    """preparing -> running: the job enters a model batch. None if it was canceled (or taken) meanwhile."""
    return _move(store, job_id, S.RUNNING, {"started_at": now()}, lease)


def succeed(
    store: JobStore, job_id: str, result_ttl_s: float, changes: dict[str, Any], lease: str | None = None
) -> JobRecord | None:
    """running -> succeeded, with the result's keys, timings and settings in `changes`."""
    finished = now()
    return _move(
        store,
        job_id,
        S.SUCCEEDED,
        {**changes, "finished_at": finished, "expires_at": finished + result_ttl_s},
        lease,
    )


def fail(store: JobStore, job_id: str, code: str, message: str, lease: str | None = None) -> JobRecord | None:
    """queued | preparing | running -> failed, with the error clients read back."""
    changes = {"finished_at": now(), "error": {"code": code, "message": message}}
    return _move(store, job_id, S.FAILED, changes, lease)


def requeue(store: JobStore, job_id: str, attempts: int, lease: str | None = None) -> JobRecord | None:
    """preparing | running -> queued: the job's worker died (attempts + 1) or hands it back (same
    attempts). With `lease`, only while the job is still held under that lease."""
    changes = {
        "attempts": attempts,
        "progress": None,
        "worker": None,
        "lease": None,
        "claimed_at": None,
        "started_at": None,
        "queued_at": now(),
    }
    return _move(store, job_id, S.QUEUED, changes, lease)


def miss_deadline(store: JobStore, job_id: str) -> JobRecord | None:
    """queued -> failed (`deadline_exceeded`): nobody claimed the job before its `deadline_at`.

    Called by a worker instead of `claim`, and by the watchdog for jobs overdue in the queue; the job
    never runs and its input is free (the caller deletes it).
    """
    job = store.get(job_id)
    t = now()
    if job is None or job.deadline_at is None or job.deadline_at > t:
        return None
    changes: dict[str, Any] = {
        "finished_at": t,
        "error": {"code": "deadline_exceeded", "message": "no worker started the job before its deadline"},
    }
    event = status_event(str(S.FAILED), t, changes)
    return store.compare_and_set(job_id, {S.QUEUED}, {**changes, "status": S.FAILED}, None, event)


def mark_published(store: JobStore, job_id: str) -> JobRecord | None:
    """A queued job's task message was published again (no status change); None unless still queued."""
    return store.compare_and_set(job_id, {S.QUEUED}, {"queued_at": now()})


def expire(store: JobStore, job_id: str) -> JobRecord | None:
    """succeeded -> expired: the result files were removed; the record stays."""
    return _move(store, job_id, S.EXPIRED, {})


@dataclass(frozen=True)
class CancelOutcome:
    """What `cancel` did. `job` is the record after the attempt (None if the job is gone)."""

    job: JobRecord | None
    canceled: bool
    # True when no worker holds the input: the caller deletes it. False for a cooperative cancel (the
    # worker deletes it) and for a refusal.
    delete_input: bool


def cancel(store: JobStore, job_id: str) -> CancelOutcome:
    """queued -> canceled (input free), or preparing -> canceled (the holding worker cleans up).

    A job already canceled counts as canceled (cancel is idempotent); any other status is refused.
    """
    t = now()
    changes = {"status": S.CANCELED, "finished_at": t}
    event = status_event(str(S.CANCELED), t, changes)
    done = store.compare_and_set(job_id, {S.QUEUED}, changes, None, event)
    if done is not None:
        return CancelOutcome(done, canceled=True, delete_input=True)
    done = store.compare_and_set(job_id, {S.PREPARING}, changes, None, event)
    if done is not None:
        return CancelOutcome(done, canceled=True, delete_input=False)
    current = store.get(job_id)
    return CancelOutcome(
        current, canceled=current is not None and current.status == S.CANCELED, delete_input=False
    )

"""The job record and the store interface that gateway and workers share.

Our store, not Celery's result backend, is the source of truth about a job (Celery reads every unknown
id as PENDING). Every state change is a compare-and-set on the current status, so two actors (a gateway
cancelling, a worker starting) can race and exactly one wins; the legal changes are named in
`jobs.lifecycle`, the only caller of `JobStore.compare_and_set`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"  # a worker holds it and reads its input, before the model runs
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})


def owner_id(api_key: str) -> str:
    """The stored owner of a job: a hash of its API key, so the store never holds a usable key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def now() -> float:
    return time.time()


@dataclass
class JobRecord:
    """One synthesis job. Times are unix seconds; `params` is `SynthesisParams` as a dict."""

    id: str
    owner: str
    status: JobStatus
    created_at: float
    params: dict[str, Any]
    output: str
    input_key: str
    request_hash: str = ""
    idempotency_key: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    progress: dict[str, int] | None = None
    timings: dict[str, float] | None = None
    error: dict[str, str] | None = None
    batch_size: int | None = None
    worker: str | None = None
    # Times the job was taken back from a worker that died holding it (`lifecycle.requeue`).
    attempts: int = 0
    # A fencing token: a fresh random value at each claim, cleared when the job goes back to the queue.
    # A worker's later writes (start, succeed, fail, hand back) must present the lease it claimed with,
    # so a worker that lost the job (declared dead, then back) can never finish it a second time.
    lease: str | None = None
    # When the job's task message was last published (create, requeue, republish): the sweeper's clock.
    queued_at: float | None = None
    claimed_at: float | None = None
    audio_key: str | None = None
    video_key: str | None = None
    video_seconds: float | None = None
    audio_seconds: float | None = None
    # The sampling settings the model really ran with (defaults resolved from the checkpoint).
    sampling: dict[str, Any] | None = None
    # Queue priority (`low`, `normal`, `high`; the task goes to that priority's queue).
    priority: str = "normal"
    # A job not claimed by a worker by this time fails with `deadline_exceeded` and never runs.
    deadline_at: float | None = None
    # Webhook target, the events it wants (`start`, `progress`, `completed`), and the delivery record
    # `{attempts, last_status, delivered}` the webhook sender keeps up to date.
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    webhook: dict[str, Any] | None = None
    # The X-Request-ID of the submission: the worker's log lines about the job carry it too.
    request_id: str | None = None

    @property
    def created_us(self) -> int:
        """Sort key of the per-owner listing (integer microseconds keep Redis scores exact)."""
        return int(round(self.created_at * 1e6))

    def to_fields(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_fields(cls, d: dict[str, Any]) -> JobRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["status"] = JobStatus(kwargs["status"])
        return cls(**kwargs)

    def is_expired(self, at: float | None = None) -> bool:
        """Succeeded results count as expired from `expires_at` on, even before the janitor ran."""
        if self.status == JobStatus.EXPIRED:
            return True
        t = now() if at is None else at
        return self.status == JobStatus.SUCCEEDED and self.expires_at is not None and self.expires_at <= t


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used by this owner for a different request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class StoreUnavailable(Exception):
    """The job store cannot be reached."""


def encode_cursor(created_us: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_us}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Raises ValueError on a malformed cursor."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    us, job_id = raw.split(":", 1)
    return int(us), job_id


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class JobStore(ABC):
    """Job records, idempotency keys and worker heartbeats."""

    @abstractmethod
    def create(self, job: JobRecord, idempotency_ttl_s: int) -> tuple[JobRecord, bool]:
        """Insert a queued job. With `job.idempotency_key` set and already used by the same owner:
        returns (the existing job, False) when its request_hash matches, else raises IdempotencyConflict.
        """

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove a job and its idempotency key (used when the broker refused the job)."""

    @abstractmethod
    def compare_and_set(
        self,
        job_id: str,
        allowed: set[JobStatus] | frozenset[JobStatus],
        changes: dict[str, Any],
        expect: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """The primitive under `jobs.lifecycle` (call those, not this): apply `changes` (may include a new
        "status") iff the current status is in `allowed` and every field in `expect` has that value, and
        append `event` to the job's event log (`jobs.events`) in the same atomic step.

        Returns the updated record, or None when the job is missing or in another status.
        """

    @abstractmethod
    def held_jobs(self) -> list[JobRecord]:
        """Jobs a worker holds (preparing or running): what the recovery watchdog checks."""

    @abstractmethod
    def queued_jobs(self) -> list[JobRecord]:
        """Jobs waiting in the queue (at most the queue's depth limit of them)."""

    @abstractmethod
    def try_lock(self, name: str, ttl_s: float) -> bool:
        """Take the named lock for `ttl_s` unless someone holds it (it is never released early, so one
        holder per `ttl_s` runs the guarded work, however many processes try)."""

    @abstractmethod
    def set_progress(self, job_ids: list[str], step: int, total: int) -> None:
        """Record sampling progress of running jobs (best effort, no status check), and append a
        `progress` event to the log of each job that is running."""

    @abstractmethod
    def update_webhook(self, job_id: str, webhook: dict[str, Any]) -> None:
        """Record the webhook delivery state of a job (no status change, no event)."""

    @abstractmethod
    def list_jobs(
        self, owner: str, status: JobStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page (None at the end)."""

    @abstractmethod
    def queued_count(self) -> int: ...

    @abstractmethod
    def due_for_expiry(self, at: float, limit: int = 100) -> list[JobRecord]:
        """Finished jobs whose `expires_at` has passed and are not yet expired."""

    @abstractmethod
    def purge_records(self, before: float) -> int:
        """Drop records that finished before `before` (stores without key TTLs)."""

    @abstractmethod
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None: ...

    @abstractmethod
    def remove_worker(self, worker_id: str) -> None: ...

    @abstractmethod
    def live_workers(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def ping(self) -> None:
        """Raises StoreUnavailable when the store cannot be used."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

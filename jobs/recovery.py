"""Recovery: jobs whose worker died, and queued jobs whose task message is gone, go back to the queue.

A worker killed with SIGKILL acknowledges nothing, and the Redis transport hands its unacknowledged
messages to another worker only after the visibility timeout (an hour by default). The job store
knows better and sooner: every worker refreshes a heartbeat every few seconds and lists the jobs it
holds in it, and every held job names its worker. `recover_jobs` (run by the workers' watchdog, one
worker at a time under a store lock) therefore

- takes back every preparing / running job whose worker has no live heartbeat (`worker_lost`) or
  whose live worker no longer lists it (`orphaned`: its final write was lost, e.g. while the store
  restarted): `lifecycle.requeue` with one more attempt, fenced on the lease the worker claimed it with,
  and a fresh task message; past `max_attempts` the job fails with `worker_lost` instead of looping;
- fails every queued job past its deadline (`lifecycle.miss_deadline`, `deadline_exceeded`);
- republishes every queued job whose message has, for `lost_message_grace_s`, waited in no broker queue
  and in no live worker's reserved list (`message_lost`): a gateway that crashed between writing the record and publishing, a message a
  killed worker had reserved, a broker restarted without its data.

Duplicates are harmless by construction: a second message for the same job finds it claimed (claim is a
compare-and-set), held by a live worker (skipped) or finished (skipped); a worker that lost its job can
no longer start or finish it (its lease is gone). The unacknowledged original, redelivered by Redis an
hour later, is such a duplicate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jobs import lifecycle
from jobs.queue import BrokerError, JobPublisher
from jobs.record import JobRecord, JobStatus, JobStore
from jobs.storage import Storage

log = logging.getLogger(__name__)

LOCK_NAME = "recovery"


@dataclass
class RecoveryReport:
    """What one run did, by reason (`worker_lost`, `orphaned`, `message_lost`)."""

    requeued: dict[str, list[str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    republish_failed: list[str] = field(default_factory=list)
    missed_deadline: list[str] = field(default_factory=list)

    def add(self, reason: str, job_id: str) -> None:
        self.requeued.setdefault(reason, []).append(job_id)

    def count(self) -> int:
        return sum(len(v) for v in self.requeued.values()) + len(self.failed)


def holder_state(job: JobRecord, live: dict[str, dict[str, Any]], margin_s: float) -> str | None:
    """Why `job` (preparing / running) should be taken back, or None while its worker holds it.

    A live worker lists the jobs it holds in each heartbeat (`jobs`, written at `beat_at`); it adds a
    job before it claims it, so a beat written after the claim (plus `margin_s` for clock skew between
    machines) that does not list the job means the worker lost it.
    """
    info = live.get(job.worker or "")
    if info is None:
        return "worker_lost"
    held, beat_at = info.get("jobs"), info.get("beat_at")
    if held is None or beat_at is None or job.id in held:
        return None
    if float(beat_at) <= (job.claimed_at or 0.0) + margin_s:
        return None
    return "orphaned"


def take_back(
    store: JobStore,
    job: JobRecord,
    reason: str,
    max_attempts: int,
    storage: Storage | None = None,
) -> JobRecord | None:
    """Requeue a held job whose worker is gone (one more attempt), or fail it past `max_attempts`.

    Fenced on the job's lease: None when the job changed meanwhile (finished, canceled, taken back by
    someone else). Does not publish: the caller does (or the sweeper will).
    """
    attempts = job.attempts + 1
    if attempts >= max_attempts:
        done = lifecycle.fail(
            store,
            job.id,
            "worker_lost",
            f"the worker running this job stopped {attempts} times; giving up",
            lease=job.lease,
        )
        if done is not None and storage is not None:
            storage.delete(job.input_key)
        return done
    return lifecycle.requeue(store, job.id, attempts, lease=job.lease)


def recover_jobs(
    store: JobStore,
    publisher: JobPublisher,
    *,
    max_attempts: int,
    lost_message_grace_s: float,
    clock_margin_s: float,
    storage: Storage | None = None,
    local_worker: dict[str, Any] | None = None,
    at: float | None = None,
) -> RecoveryReport:
    """One pass of the watchdog (see the module docstring). Store errors propagate; broker errors only
    leave the jobs for the next pass. `local_worker` is the calling worker's own heartbeat, taken from
    memory: it is live whatever the store says."""
    t = time.time() if at is None else at
    report = RecoveryReport()
    live = {str(w.get("id")): w for w in store.live_workers()}
    if local_worker is not None:
        live[str(local_worker["id"])] = local_worker
    for job in store.held_jobs():
        reason = holder_state(job, live, clock_margin_s)
        if reason is None:
            continue
        done = take_back(store, job, reason, max_attempts, storage)
        if done is None:
            continue
        if done.status == JobStatus.FAILED:
            log.warning("job %s failed: its worker %s stopped too often", job.id, job.worker)
            report.failed.append(job.id)
            continue
        log.warning("job %s taken back from worker %s (%s); requeued", job.id, job.worker, reason)
        report.add(reason, job.id)
        try:
            publisher.publish(job.id, job.priority)
        except BrokerError:
            report.republish_failed.append(job.id)  # queued in the store: the sweep below retries it

    # Jobs nobody claimed before their deadline fail now (a worker would fail them at claim anyway,
    # but a deep queue could keep them waiting long past it).
    for job in store.queued_jobs():
        if job.deadline_at is not None and job.deadline_at <= t:
            if lifecycle.miss_deadline(store, job.id) is not None:
                log.info("job %s missed its deadline in the queue", job.id)
                report.missed_deadline.append(job.id)
                if storage is not None:
                    storage.delete(job.input_key)

    # A message a live worker received and has not finished (it may wait there for a free task thread).
    reserved = {str(i) for w in live.values() for i in w.get("reserved") or ()}
    stale = [
        j
        for j in store.queued_jobs()
        if t - (j.queued_at or j.created_at) > lost_message_grace_s and j.id not in reserved
    ]
    if not stale:
        return report
    try:
        waiting = publisher.waiting_ids()
    except BrokerError as exc:
        log.warning("cannot read the broker queue: %s", exc)
        return report
    if waiting is None:
        return report  # a transport whose queue cannot be read: leave its messages to the broker
    for job in stale:
        if job.id in waiting or lifecycle.mark_published(store, job.id) is None:
            continue
        try:
            publisher.publish(job.id, job.priority)
        except BrokerError:
            report.republish_failed.append(job.id)
            continue
        log.warning("job %s was queued with no message in the broker; republished", job.id)
        report.add("message_lost", job.id)
    return report

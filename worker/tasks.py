"""The synthesize task: one job id in, the job record and result files out.

The task thread claims the job (queued -> preparing) before it touches the input, decodes the video,
and hands the item to the batcher, whose model thread starts it (preparing -> running). A cancel that
arrives while the job is preparing is cooperative: `start` then fails, and this worker, the one holder
of the input, drops the job and deletes the input (see `jobs.lifecycle`).

Idempotent: a job already finished is skipped, a job another live worker holds is skipped, results are
keyed by job id and renamed into place, and every write after the claim is fenced on the claim's lease
(`jobs.lifecycle`), so a duplicate or redelivered message cannot run a job to completion twice. Input
errors fail the job with the library's {code, message} and are never retried; nothing a client uploads
can kill the worker. On shutdown, jobs this worker cannot finish in time go back to the queue.
"""

from __future__ import annotations

import logging
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from celery import Task

from diffv2s.errors import DiffV2SError
from diffv2s.schemas import SynthesisParams, SynthesisRequest, SynthesisResult
from jobs import TERMINAL, JobRecord, JobStatus, StoreUnavailable, lifecycle
from jobs.queue import TASK_NAME, BrokerError
from jobs.recovery import holder_state, take_back
from jobs.storage import Storage, StorageUnavailable, audio_key, video_key
from worker import logs, metrics
from worker.batcher import Canceled, ShuttingDown
from worker.celery_app import app
from worker.model import ModelRuntime, get_runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


def _retrying(rt: ModelRuntime, what: str, fn: Callable[[], T]) -> T:
    """Run a store write, retried while the store is unreachable (a Redis restart) for `store_retry_s`."""
    deadline = time.monotonic() + rt.settings.store_retry_s
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s: the job store is unreachable (%s); retrying", what, exc)
            time.sleep(0.5)


def write_wav(storage: Storage, key: str, waveform: np.ndarray, sample_rate: int) -> None:
    """waveform: float32 [n_samples] in [-1, 1] -> 16-bit PCM mono WAV at `key` (atomic)."""
    pcm = (np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with storage.writer(key) as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def _finish_metrics(job: JobRecord, outcome: str) -> None:
    metrics.JOBS_FINISHED.labels(outcome).inc()
    if job.finished_at is not None:
        metrics.JOB_DURATION.observe(max(0.0, job.finished_at - job.created_at))


def fail_job(rt: ModelRuntime, job: JobRecord, code: str, message: str) -> str:
    """Fail the job this worker holds (fenced on its lease); returns the outcome."""
    done = _retrying(rt, f"job {job.id}", lambda: lifecycle.fail(rt.store, job.id, code, message, job.lease))
    if done is None:
        log.warning("job %s was no longer this worker's when it failed (%s)", job.id, code)
        return "skipped:taken"
    rt.storage.delete(job.input_key)
    _finish_metrics(done, "failed")
    log.info("job %s failed: %s: %s", job.id, code, message)
    return "failed"


def succeed_job(rt: ModelRuntime, job: JobRecord, result: SynthesisResult) -> str:
    """Write the result and mark the job succeeded (fenced on its lease); returns the outcome."""
    current = _retrying(rt, f"job {job.id}", lambda: rt.store.get(job.id))
    if current is None or current.lease != job.lease:
        # Taken back from this worker (declared dead, then back): the job's new holder writes the result.
        log.warning("job %s is no longer this worker's; its result is dropped", job.id)
        return "skipped:taken"
    write_wav(rt.storage, audio_key(job.id), result.waveform, result.sample_rate)
    changes: dict[str, Any] = {}
    if job.output == "mp4" and result.mp4_path is not None:
        rt.storage.put_file(video_key(job.id), Path(result.mp4_path))
        changes["video_key"] = video_key(job.id)
    changes |= {
        "audio_key": audio_key(job.id),
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "batch_size": result.batch_size,
        "audio_seconds": round(result.audio_seconds, 4),
        "video_seconds": round(result.video_seconds, 4) if result.video_seconds else job.video_seconds,
        "sampling": result.sampling or None,
    }
    done = _retrying(
        rt,
        f"job {job.id}",
        lambda: lifecycle.succeed(rt.store, job.id, rt.settings.result_ttl_s, changes, job.lease),
    )
    if done is None:
        log.warning("job %s was no longer this worker's when its result was ready", job.id)
        return "skipped:taken"
    rt.storage.delete(job.input_key)
    _finish_metrics(done, "succeeded")
    total = result.timings.get("total")
    if total and result.audio_seconds > 0:
        metrics.REAL_TIME_FACTOR.observe(total / result.audio_seconds)
    return "succeeded"


def _wait(rt: ModelRuntime, job: JobRecord, request: SynthesisRequest) -> SynthesisResult:
    """Hand the item to the batcher and wait; a cancel seen in the store (or the job taken back from
    this worker) removes it from the queue."""
    job_id = job.id
    future = rt.batcher.submit(job_id, request)
    deadline = time.monotonic() + rt.settings.task_time_limit_s
    while True:
        try:
            return future.result(timeout=rt.settings.cancel_poll_s)
        except TimeoutError:
            pass
        if time.monotonic() > deadline:
            rt.batcher.cancel(job_id)
            raise TimeoutError(f"no result within {rt.settings.task_time_limit_s} s")
        if job_id not in rt.batcher.in_flight():
            current = rt.store.get(job_id)
            if current is None or current.status == JobStatus.CANCELED or current.lease != job.lease:
                rt.batcher.cancel(job_id)  # if it just started instead, admission refuses it


def _drop_canceled(rt: ModelRuntime, job: JobRecord) -> str:
    """A job canceled while this worker held it: the input is ours to delete; no error, no retry.
    A job taken back from this worker instead (its lease is gone) is left alone: it has a new holder."""
    current = _retrying(rt, f"job {job.id}", lambda: rt.store.get(job.id))
    if current is not None and current.status != JobStatus.CANCELED:
        log.warning("job %s was taken back from this worker; dropped here", job.id)
        return "skipped:taken"
    metrics.JOBS_FINISHED.labels("canceled").inc()
    rt.storage.delete(job.input_key)
    log.info("job %s was canceled while it was being prepared", job.id)
    return "canceled"


def hand_back(rt: ModelRuntime, job: JobRecord) -> str:
    """The worker stops before the job could run: back to the queue (same attempts) with a new message."""
    back = _retrying(
        rt, f"job {job.id}", lambda: lifecycle.requeue(rt.store, job.id, job.attempts, job.lease)
    )
    if back is None:
        return "skipped:raced"
    metrics.JOBS_RECOVERED.labels("handed_back").inc()
    try:
        rt.publisher.publish(job.id, job.priority)
    except BrokerError:
        log.warning("job %s handed back but not republished; the watchdog will republish it", job.id)
    log.info("job %s handed back to the queue (worker shutting down)", job.id)
    return "handed_back"


def run_job(rt: ModelRuntime, job_id: str) -> str:
    """Process one job; returns the outcome (for logs and tests)."""
    rt.hold(job_id)
    try:
        with logs.job_context(job_id):  # every line of this thread names the job (worker.logs)
            outcome = _run_job(rt, job_id)
            log.info("job %s: %s", job_id, outcome)
            return outcome
    finally:
        rt.release(job_id)


def _run_job(rt: ModelRuntime, job_id: str) -> str:
    job = rt.store.get(job_id)
    if job is None:
        log.warning("job %s is not in the store (purged or never created); dropping the message", job_id)
        return "missing"
    logs.bind_request_id(job.request_id)  # this thread's lines carry the submission's X-Request-ID
    if job.status in TERMINAL:
        if job.status == JobStatus.CANCELED:  # canceled by the client while its message waited
            metrics.JOBS_FINISHED.labels("canceled").inc()
            # A cooperative cancel whose worker died before cleaning up leaves the input to this one.
            rt.storage.delete(job.input_key)
        return f"skipped:{job.status}"
    if job.status in lifecycle.HELD:
        # A second message for a held job: the watchdog's republish, or Redis redelivering the message
        # of a worker it thinks is gone. Only a job whose worker is really gone is taken back here.
        live = {str(w.get("id")): w for w in rt.store.live_workers()}
        if job.worker == rt.worker_id or holder_state(job, live, rt.settings.heartbeat_interval_s) is None:
            return "skipped:held"
        taken = take_back(rt.store, job, "worker_lost", rt.settings.max_attempts, rt.storage)
        if taken is None:
            return "skipped:raced"
        if taken.status == JobStatus.FAILED:
            metrics.JOBS_FINISHED.labels("failed").inc()
            metrics.JOBS_LOST.inc()
            return "failed"
        metrics.JOBS_RECOVERED.labels("worker_lost").inc()
    if job.deadline_at is not None and job.deadline_at <= time.time():
        missed = lifecycle.miss_deadline(rt.store, job.id)
        if missed is None:  # canceled or claimed meanwhile
            return "skipped:raced"
        rt.storage.delete(job.input_key)
        _finish_metrics(missed, "failed")
        log.info("job %s missed its deadline in the queue; it does not run", job.id)
        return "deadline_exceeded"
    claimed = lifecycle.claim(rt.store, job.id, rt.worker_id)
    if claimed is None:  # canceled (or taken) between the read above and the claim
        return "skipped:raced"
    job = claimed
    rt.set_lease(job.id, job.lease)

    request = SynthesisRequest(
        video=rt.storage.local_path(job.input_key),
        params=SynthesisParams.from_dict(job.params),
        output="mp4" if job.output == "mp4" else "wav",
        mp4_path=rt.storage.scratch_path(".mp4") if job.output == "mp4" else None,
        request_id=job.id,
    )
    metrics.JOBS_IN_PROGRESS.inc()
    try:
        # Preprocessing (decode + landmarks) runs here in the task thread, in parallel with the batch
        # the model thread is running; only model work goes through the batcher.
        if rt.settings.test_hold_prepared_s:
            time.sleep(rt.settings.test_hold_prepared_s)  # widens the cancel window for a test
        rt.prepare(request)  # the deployment's video limits, then decode + mouth ROI
        result = _wait(rt, job, request)
    except Canceled:
        return _drop_canceled(rt, job)
    except ShuttingDown:
        return hand_back(rt, job)
    except TimeoutError as exc:
        return fail_job(rt, job, "timeout", str(exc))
    except DiffV2SError as exc:
        return fail_job(rt, job, exc.code, exc.message)
    except Exception as exc:
        log.exception("job %s crashed the model call", job.id)
        return fail_job(rt, job, "internal_error", f"synthesis failed unexpectedly ({type(exc).__name__})")
    finally:
        metrics.JOBS_IN_PROGRESS.dec()

    try:
        if result.error is not None:
            return fail_job(rt, job, result.error.code, result.error.message)
        try:
            return succeed_job(rt, job, result)
        except (StorageUnavailable, OSError) as exc:
            log.error("job %s: the result could not be written: %s", job.id, exc)
            return fail_job(
                rt, job, "storage_unavailable", f"the result could not be written to storage: {exc}"
            )
    finally:
        if request.mp4_path is not None:
            Path(request.mp4_path).unlink(missing_ok=True)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def synthesize(self: Task, job_id: str) -> str:
    rt = get_runtime()
    rt.start_heartbeat()  # idempotent: a worker that holds a job is always in the heartbeats
    return run_job(rt, job_id)

"""The synthesize task: one job id in, the job record and result files out.

The task thread claims the job (queued -> preparing) before it touches the input, decodes the video,
and hands the item to the batcher, whose model thread starts it (preparing -> running). A cancel that
arrives while the job is preparing is cooperative: `start` then fails, and this worker, the one holder
of the input, drops the job and deletes the input (see `jobs.lifecycle`).

Idempotent: a job already finished is skipped, results are keyed by job id and renamed into place, so
a redelivered message cannot duplicate or corrupt a result. Input errors fail the job with the
library's {code, message} and are never retried; nothing a client uploads can kill the worker.
"""

from __future__ import annotations

import logging
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from celery import Task
from celery.exceptions import Reject

from diffv2s.errors import DiffV2SError
from diffv2s.schemas import SynthesisParams, SynthesisRequest, SynthesisResult
from jobs import TERMINAL, JobRecord, JobStatus, lifecycle
from jobs.queue import TASK_NAME
from jobs.storage import Storage, audio_key, video_key
from worker import metrics
from worker.batcher import Canceled, ShuttingDown
from worker.celery_app import app
from worker.model import ModelRuntime, get_runtime

log = logging.getLogger(__name__)

# A job redelivered more often than this (its worker kept dying on it) fails instead of looping.
MAX_ATTEMPTS = 3


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


def fail_job(rt: ModelRuntime, job: JobRecord, code: str, message: str) -> None:
    done = lifecycle.fail(rt.store, job.id, code, message)
    rt.storage.delete(job.input_key)
    if done is not None:
        _finish_metrics(done, "failed")
    log.info("job %s failed: %s: %s", job.id, code, message)


def succeed_job(rt: ModelRuntime, job: JobRecord, result: SynthesisResult) -> None:
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
    done = lifecycle.succeed(rt.store, job.id, rt.settings.result_ttl_s, changes)
    rt.storage.delete(job.input_key)
    if done is None:
        log.warning("job %s was no longer running when its result was ready", job.id)
        return
    _finish_metrics(done, "succeeded")
    total = result.timings.get("total")
    if total and result.audio_seconds > 0:
        metrics.REAL_TIME_FACTOR.observe(total / result.audio_seconds)


def _wait(rt: ModelRuntime, job_id: str, request: SynthesisRequest) -> SynthesisResult:
    """Hand the item to the batcher and wait; a cancel seen in the store removes it from the queue."""
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
            if current is None or current.status == JobStatus.CANCELED:
                rt.batcher.cancel(job_id)  # if it just started instead, admission refuses it


def _drop_canceled(rt: ModelRuntime, job: JobRecord) -> str:
    """A job canceled while this worker held it: the input is ours to delete; no error, no retry."""
    metrics.JOBS_FINISHED.labels("canceled").inc()
    rt.storage.delete(job.input_key)
    log.info("job %s was canceled while it was being prepared", job.id)
    return "canceled"


def run_job(rt: ModelRuntime, job_id: str) -> str:
    """Process one job; returns the outcome (for logs and tests)."""
    job = rt.store.get(job_id)
    if job is None:
        log.warning("job %s is not in the store (purged or never created); dropping the message", job_id)
        return "missing"
    if job.status in TERMINAL:
        if job.status == JobStatus.CANCELED:  # canceled by the client while its message waited
            metrics.JOBS_FINISHED.labels("canceled").inc()
            # A cooperative cancel whose worker died before cleaning up leaves the input to this one.
            rt.storage.delete(job.input_key)
        return f"skipped:{job.status}"
    if job.status in lifecycle.HELD:
        # Redelivered after its worker died holding it: start it again, a bounded number of times.
        attempts = job.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            fail_job(rt, job, "worker_lost", f"the job was interrupted {attempts} times; giving up")
            return "failed"
        if lifecycle.requeue(rt.store, job.id, attempts) is None:
            return "skipped:raced"
    claimed = lifecycle.claim(rt.store, job.id, rt.worker_id)
    if claimed is None:  # canceled (or taken) between the read above and the claim
        return "skipped:raced"
    job = claimed

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
        rt.synth.prepare(request)
        result = _wait(rt, job.id, request)
    except Canceled:
        return _drop_canceled(rt, job)
    except ShuttingDown:
        raise Reject("worker shutting down", requeue=True) from None
    except TimeoutError as exc:
        fail_job(rt, job, "timeout", str(exc))
        return "failed"
    except DiffV2SError as exc:
        fail_job(rt, job, exc.code, exc.message)
        return "failed"
    except Exception as exc:
        log.exception("job %s crashed the model call", job.id)
        fail_job(rt, job, "internal_error", f"synthesis failed unexpectedly ({type(exc).__name__})")
        return "failed"
    finally:
        metrics.JOBS_IN_PROGRESS.dec()

    try:
        if result.error is not None:
            fail_job(rt, job, result.error.code, result.error.message)
            return "failed"
        succeed_job(rt, job, result)
        return "succeeded"
    finally:
        if request.mp4_path is not None:
            Path(request.mp4_path).unlink(missing_ok=True)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def synthesize(self: Task, job_id: str) -> str:
    outcome = run_job(get_runtime(), job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome

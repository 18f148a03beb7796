"""The model inside a worker process: loaded once, warmed up, fed by the dynamic batcher.

`ModelRuntime` owns the Synthesizer, the batcher (one model thread), a heartbeat thread and the
recovery watchdog's thread. The heartbeat is what the gateway's /readyz counts as a live worker, so it
starts only after the warmup ran a batch end to end, and it is written only while the model thread
itself is live (it ticks while idle and at every sampling step; see `model_live`). It lists the jobs
this worker holds, which is how the watchdog (`jobs.recovery`, in whichever worker takes the store
lock) tells a job whose worker died or lost it. The heartbeat thread also runs the retention janitor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from diffv2s.schemas import SynthesisRequest, SynthesisResult
from jobs import JobStore, lifecycle, open_store
from jobs.queue import JobPublisher
from jobs.recovery import LOCK_NAME, recover_jobs
from jobs.storage import Storage, open_storage
from worker import metrics
from worker.batcher import DynamicBatcher
from worker.logs import job_log_id
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(
        self, settings: WorkerSettings, store: JobStore | None = None, storage: Storage | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store_url, settings.store_prefix, settings.record_ttl_s)
        self.storage = storage or open_storage(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.synth: Any = None
        self.info: dict[str, Any] = {}
        self.batcher: DynamicBatcher[SynthesisRequest, SynthesisResult] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            admit=self._admit,
            on_batch=lambda size, _elapsed: metrics.BATCH_SIZE.observe(size),
            name="diffv2s-model",
            tick_s=min(1.0, settings.heartbeat_interval_s),
        )
        self.started_at = 0.0
        self._stop = threading.Event()
        self._shutdown_deadline: float | None = None
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="diffv2s-heartbeat", daemon=True)
        self._recovery = threading.Thread(target=self._recovery_loop, name="diffv2s-recovery", daemon=True)
        self._publisher: JobPublisher | None = None
        # job id -> the lease this worker claimed it with (None between hold and claim), and how many
        # task threads hold it (a duplicate message for a job this worker runs holds it a moment too)
        self._held: dict[str, str | None] = {}
        self._holds: Counter[str] = Counter()
        self._held_lock = threading.Lock()
        self._lock = threading.Lock()
        self._loaded = False
        self._beating = False
        self._stalled = False

    # ---------------------------------------------------------------------------------- lifecycle
    def load(self) -> ModelRuntime:
        """Load and warm up the model (idempotent). Torch is imported here, in the worker process."""
        with self._lock:
            if self._loaded:
                return self
            import torch

            from diffv2s.pipeline import Synthesizer

            s = self.settings
            if s.torch_threads:
                torch.set_num_threads(s.torch_threads)
            t0 = time.perf_counter()
            extra: dict[str, Any] = {"engine_dir": s.engine_dir} if s.engine_dir is not None else {}
            self.synth = Synthesizer.load(s.checkpoint, engine=s.engine, device=s.device, **extra)
            if s.warmup:
                self.synth.warmup()
            self.info = dict(self.synth.info)
            log.info("model loaded and warmed up in %.1f s: %s", time.perf_counter() - t0, self.info)
            metrics.MODEL_LOADED.set(1)
            metrics.MODEL_LIVE.set_function(lambda: 1.0 if self.model_live() else 0.0)
            metrics.ENGINE_INFO.labels(str(self.info.get("engine", s.engine))).set(1)
            metrics.track_gpu_memory()
            self.batcher.start()
            self._loaded = True
        return self

    def start_heartbeat(self) -> None:
        with self._lock:
            if self._beating:
                return
            self._beating = True
        self.started_at = time.time()
        self._beat()
        self._heartbeat.start()
        self._recovery.start()
        metrics.WORKER_UP.set(1)

    @property
    def publisher(self) -> JobPublisher:
        """Publishes the jobs this worker hands back or the watchdog takes back."""
        with self._lock:
            if self._publisher is None:
                self._publisher = JobPublisher(self.settings, name="diffv2s-worker-publisher")
            return self._publisher

    # ------------------------------------------------------------------------------- held jobs
    def hold(self, job_id: str) -> None:
        """Listed in the heartbeat from now on; call before claiming, so a beat after the claim lists it.
        Each hold is matched by one release."""
        with self._held_lock:
            self._held.setdefault(job_id, None)
            self._holds[job_id] += 1

    def set_lease(self, job_id: str, lease: str | None) -> None:
        with self._held_lock:
            self._held[job_id] = lease

    def lease_of(self, job_id: str) -> str | None:
        with self._held_lock:
            return self._held.get(job_id)

    def release(self, job_id: str) -> None:
        with self._held_lock:
            self._holds[job_id] -= 1
            if self._holds[job_id] <= 0:
                del self._holds[job_id]
                self._held.pop(job_id, None)

    def held_ids(self) -> list[str]:
        with self._held_lock:
            return sorted(self._held)

    def model_live(self) -> bool:
        """The model thread runs and ticked within `model_stall_s` (idle, between batches or per step)."""
        return self.batcher.alive() and self.batcher.seconds_since_tick() <= self.settings.model_stall_s

    def begin_shutdown(self) -> None:
        """Warm shutdown: items waiting in the batcher go back to the queue at once; the batch in flight
        gets `shutdown_grace_s` to finish, then its jobs go back too (their tasks hand them back)."""

        grace = self.settings.shutdown_grace_s
        self._shutdown_deadline = time.monotonic() + grace

        def stop_batcher() -> None:
            self.batcher.shutdown(grace)
            if self.batcher.alive():
                ids = self.batcher.abandon()
                if ids:
                    log.warning(
                        "the batch in flight outlived the %.0f s shutdown grace; handing back %s", grace, ids
                    )

        threading.Thread(target=stop_batcher, name="diffv2s-batcher-stop", daemon=True).start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the batcher, heartbeat and watchdog; True when the model thread is still inside a batch
        (abandoned: its jobs were handed back), so the process must not wait for it."""
        if timeout is None:  # what is left of the grace begin_shutdown started (all of it without one)
            left = self._shutdown_deadline - time.monotonic() if self._shutdown_deadline else None
            timeout = self.settings.shutdown_grace_s if left is None else max(0.0, left)
        self.batcher.shutdown(timeout)
        self.batcher.abandon()
        self._stop.set()
        metrics.WORKER_UP.set(0)
        try:
            self.store.remove_worker(self.worker_id)
        except Exception:
            log.warning("could not remove the heartbeat of %s", self.worker_id)
        return self.batcher.alive()

    # ------------------------------------------------------------------------------- task threads
    def prepare(self, request: SynthesisRequest) -> None:
        """Check the video against this deployment's limits (`WorkerSettings.video_limits`, the same
        DIFFV2S_MAX_VIDEO_* values the gateway checks) from its header alone, before the model is asked for
        anything, then decode it and find the mouth (`Synthesizer.prepare`) under the same limits (the
        decoder's own bounds while decoding). Raises the typed input errors (resolution_too_high, ...)."""
        from diffv2s.video.decode import probe_video

        limits = self.settings.video_limits
        limits.check(probe_video(Path(request.video), limits))
        self.synth.prepare(request, limits)

    # ------------------------------------------------------------------------------- model thread
    def _admit(self, job_id: str) -> bool:
        """preparing -> running in the store; False (drop the item) if the job was canceled meanwhile
        (or taken back from this worker: the lease no longer matches)."""
        job = lifecycle.start(self.store, job_id, lease=self.lease_of(job_id))
        if job is None:
            return False
        assert job.started_at is not None
        metrics.QUEUE_WAIT.observe(max(0.0, job.started_at - job.created_at))
        return True

    def _run_batch(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        job_ids = [r.request_id for r in requests]
        token = job_log_id.set(",".join(job_ids))  # the model thread's log lines name the batch's jobs
        try:
            return self._run_batch_of(requests, job_ids)
        finally:
            job_log_id.reset(token)

    def _run_batch_of(self, requests: list[SynthesisRequest], job_ids: list[str]) -> list[SynthesisResult]:
        last = [0.0]

        def progress(step: int, total: int) -> None:
            self.batcher.tick()  # every sampling step proves the model thread is making progress
            t = time.monotonic()
            if step < total and t - last[0] < self.settings.progress_interval_s:
                return
            last[0] = t
            try:
                self.store.set_progress(job_ids, step, total)
            except Exception:  # progress is best effort; the job goes on
                log.warning("progress update failed for %d jobs", len(job_ids))

        results: list[SynthesisResult] = self.synth.synthesize_batch(requests, progress=progress)
        ok = [r for r in results if r.error is None]
        for r in results:
            if "preprocess" in r.timings:
                metrics.STAGE_SECONDS.labels("preprocess").observe(r.timings["preprocess"])
        if ok:  # the later stages ran once for the whole batch
            for stage in metrics.STAGES[1:]:
                if stage in ok[0].timings:
                    metrics.STAGE_SECONDS.labels(stage).observe(ok[0].timings[stage])
        return results

    # --------------------------------------------------------------------------- heartbeat thread
    def _beat(self) -> None:
        """Refresh this worker's heartbeat, only while its model thread is live: a wedged model thread
        stops the heartbeat, so /readyz and the queue stop counting this worker."""
        if not self.model_live():
            if not self._stalled:
                log.error(
                    "the model thread has not ticked for %.0f s (limit %.0f s); withdrawing the heartbeat",
                    self.batcher.seconds_since_tick(),
                    self.settings.model_stall_s,
                )
            self._stalled = True
            self.store.remove_worker(self.worker_id)
            return
        if self._stalled:
            log.warning("the model thread is live again; heartbeat restored")
            self._stalled = False
        # The time is read before the list: a job claimed before `beat_at` was held before it, so it is
        # listed (see jobs.recovery.holder_state).
        beat_at = time.time()
        held = self.held_ids()
        reserved = reserved_ids()
        st = self.batcher.stats
        info = {
            "id": self.worker_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "engine": self.info.get("engine", self.settings.engine),
            "device": self.settings.device,
            "checkpoint_sha256": self.info.get("checkpoint_sha256", ""),
            "preset": self.info.get("preset", ""),
            "max_batch_size": self.settings.max_batch_size,
            "max_queue_delay_ms": self.settings.max_queue_delay_ms,
            "batches": st.batches,
            "items": st.items,
            "max_batch": st.max_batch,
            "batch_sizes": {str(k): v for k, v in sorted(st.sizes.items())},
            "busy_s": round(st.busy_s, 3),
            "queued": self.batcher.queued(),
            "jobs": held,
            "reserved": reserved,
            "beat_at": beat_at,
        }
        self.store.heartbeat(self.worker_id, info, self.settings.heartbeat_ttl_s)

    def _heartbeat_loop(self) -> None:
        next_janitor = time.monotonic() + self.settings.janitor_interval_s
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            parent = self.settings.parent_pid
            if parent and os.getppid() != parent:
                log.warning("the launching process %d is gone; shutting down", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self._beat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            if time.monotonic() >= next_janitor:
                next_janitor = time.monotonic() + self.settings.janitor_interval_s
                try:
                    expire_results(self.store, self.storage, self.settings)
                except Exception:
                    log.exception("retention janitor failed")

    def _recovery_loop(self) -> None:
        s = self.settings
        while not self._stop.wait(s.recovery_interval_s):
            try:
                # The lock outlives most of an interval: one worker runs the pass, the others skip it.
                if self.store.try_lock(LOCK_NAME, 0.8 * s.recovery_interval_s):
                    self.recover()
            except Exception as exc:
                log.warning("recovery watchdog failed: %s", exc)

    def recover(self) -> None:
        """One pass of the recovery watchdog (`jobs.recovery.recover_jobs`), counted in metrics."""
        s = self.settings
        # This worker judges its own jobs by what it holds in memory, not by its heartbeat in the store
        # (which may have expired while the store restarted).
        beat_at = time.time()
        me = {"id": self.worker_id, "jobs": self.held_ids(), "reserved": reserved_ids(), "beat_at": beat_at}
        report = recover_jobs(
            self.store,
            self.publisher,
            local_worker=me,
            max_attempts=s.max_attempts,
            lost_message_grace_s=s.lost_message_grace_s,
            clock_margin_s=s.heartbeat_interval_s,
            storage=self.storage,
        )
        for reason, ids in report.requeued.items():
            metrics.JOBS_RECOVERED.labels(reason).inc(len(ids))
        if report.missed_deadline:
            metrics.JOBS_FINISHED.labels("failed").inc(len(report.missed_deadline))
        if report.failed:
            metrics.JOBS_FINISHED.labels("failed").inc(len(report.failed))
            metrics.JOBS_LOST.inc(len(report.failed))


def reserved_ids() -> list[str]:
    """Ids of the task messages this worker process received and has not finished (a job's task id is
    its job id): the recovery sweep must not republish a queued job whose message waits in a worker for
    a free task thread."""
    from celery.worker import state

    for _ in range(5):
        try:
            return sorted({str(r.id) for r in list(state.reserved_requests)})
        except RuntimeError:  # the consumer thread changed the set while it was copied
            time.sleep(0.01)
    return []


def expire_results(store: JobStore, storage: Storage, settings: WorkerSettings) -> int:
    """Remove results past their expiry (the record stays, as `expired`), then drop old records."""
    now = time.time()
    n = 0
    for job in store.due_for_expiry(now):
        for key in (job.audio_key, job.video_key):
            if key:
                storage.delete(key)
        if lifecycle.expire(store, job.id) is not None:
            n += 1
    store.purge_records(now - settings.result_ttl_s - settings.record_ttl_s)
    storage.sweep_scratch(older_than_s=2 * settings.task_time_limit_s)
    if n:
        log.info("expired the results of %d jobs", n)
    return n


_runtime: ModelRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: WorkerSettings | None = None) -> ModelRuntime:
    """The process's runtime, created and loaded on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = ModelRuntime(settings or WorkerSettings())
    return _runtime.load()

"""The model inside a worker process: loaded once, warmed up, fed by the dynamic batcher.

`ModelRuntime` owns the Synthesizer, the batcher (one model thread) and a heartbeat thread. The
heartbeat is what the gateway's /readyz counts as a live worker, so it starts only after the warmup
ran a batch end to end, and it is written only while the model thread itself is live (it ticks while
idle and at every sampling step; see `model_live`). The heartbeat thread also runs the retention
janitor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from diffv2s.schemas import SynthesisRequest, SynthesisResult
from jobs import JobStore, lifecycle, open_store
from jobs.storage import Storage, open_storage
from worker import metrics
from worker.batcher import DynamicBatcher
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(
        self, settings: WorkerSettings, store: JobStore | None = None, storage: Storage | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store_url, settings.store_prefix, settings.record_ttl_s)
        self.storage = storage or open_storage(settings.storage_dir)
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
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="diffv2s-heartbeat", daemon=True)
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
            extra = {"engine_dir": s.engine_dir} if s.engine_dir is not None else {}
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
        metrics.WORKER_UP.set(1)

    def model_live(self) -> bool:
        """The model thread runs and ticked within `model_stall_s` (idle, between batches or per step)."""
        return self.batcher.alive() and self.batcher.seconds_since_tick() <= self.settings.model_stall_s

    def begin_shutdown(self) -> None:
        """Warm shutdown: the batch in flight finishes; queued items go back to the broker."""
        threading.Thread(target=self.batcher.shutdown, name="diffv2s-batcher-stop", daemon=True).start()

    def stop(self, timeout: float = 60.0) -> None:
        self.batcher.shutdown(timeout)
        self._stop.set()
        metrics.WORKER_UP.set(0)
        try:
            self.store.remove_worker(self.worker_id)
        except Exception:
            log.warning("could not remove the heartbeat of %s", self.worker_id)

    # ------------------------------------------------------------------------------- model thread
    def _admit(self, job_id: str) -> bool:
        """preparing -> running in the store; False (drop the item) if the job was canceled meanwhile."""
        job = lifecycle.start(self.store, job_id)
        if job is None:
            return False
        assert job.started_at is not None
        metrics.QUEUE_WAIT.observe(max(0.0, job.started_at - job.created_at))
        return True

    def _run_batch(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        job_ids = [r.request_id for r in requests]
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

"""Settings of a worker process (prefix `DIFFV2S_`), on top of what it shares with the gateway."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from diffv2s.engines.spec import ENGINE_NAMES
from diffv2s.video.decode import VideoLimits
from jobs.settings import CommonSettings


class WorkerSettings(CommonSettings):
    # Model: checkpoint None = the shipped default; engine: one of diffv2s.engines.spec.ENGINE_NAMES
    # ("torch", "onnxruntime", "onnxruntime-cpu-int8", "tensorrt", ...), checked at start; None = the
    # library's choice (diffv2s.engines.spec.resolve_engine: onnxruntime-cpu on a CPU, else torch).
    checkpoint: Path | None = None
    engine: str | None = None
    engine_dir: Path | None = None
    device: str = "cpu"
    # Dynamic batching (Triton-style): up to max_batch_size items, waiting at most max_queue_delay_ms.
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_queue_delay_ms: float = Field(default=10.0, ge=0)
    # Task threads; 0 = max_batch_size (enough waiting tasks to fill a batch).
    concurrency: int = Field(default=0, ge=0)
    # CPU threads of torch (0 = torch's default). Several workers on one machine should share the cores.
    torch_threads: int = Field(default=0, ge=0)
    warmup: bool = True
    # Prometheus endpoint of this worker (0 = off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # The model thread is wedged (heartbeat withdrawn, healthcheck fails) when it has not ticked this
    # long: it ticks every second while idle and at every sampling step of a batch.
    model_stall_s: float = Field(default=120.0, gt=0)
    janitor_interval_s: float = Field(default=60.0, gt=0)
    # How often a task waiting in the batcher checks whether its job was canceled.
    cancel_poll_s: float = Field(default=0.5, gt=0)
    # Sampling progress is written to the store at most this often per batch (and always at the end).
    progress_interval_s: float = Field(default=0.25, ge=0)
    # Recovery watchdog (`jobs.recovery`): every recovery_interval_s one worker (a store lock picks it)
    # takes back the jobs of workers whose heartbeat stopped and republishes queued jobs whose message
    # has been in no broker queue for lost_message_grace_s. A job taken back max_attempts - 1 times
    # fails with `worker_lost` the next time instead of looping.
    recovery_interval_s: float = Field(default=5.0, gt=0)
    lost_message_grace_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # Warm shutdown (SIGTERM): the batch in flight gets this long to finish; then its jobs, like those
    # still waiting in the batcher, go back to the queue. Keep it below the supervisor's kill deadline
    # (compose's stop_grace_period, 75 s).
    shutdown_grace_s: float = Field(default=50.0, ge=0)
    # A worker retries its final writes (result, failure) this long while the job store is unreachable
    # (a Redis restart); after that the job is left to the watchdog (it is no longer in the heartbeat).
    store_retry_s: float = Field(default=30.0, ge=0)
    # Set by a launcher (the embedded mode): the worker shuts down when that process is gone.
    parent_pid: int = Field(default=0, ge=0)
    # Tests only: the task thread waits this long after claiming a job, before it reads the input, so
    # a test can cancel a job in the preparing state deterministically. Refused in prod.
    test_hold_prepared_s: float = Field(default=0.0, ge=0, le=60)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str | None) -> str | None:
        if engine is not None and engine not in ENGINE_NAMES:
            raise ValueError(f"DIFFV2S_ENGINE must be one of {', '.join(ENGINE_NAMES)}; got {engine!r}")
        return engine

    @model_validator(mode="after")
    def _check_worker(self) -> WorkerSettings:
        if self.environment == "prod" and self.test_hold_prepared_s:
            raise ValueError("DIFFV2S_TEST_HOLD_PREPARED_S is a test hook; it must be 0 in prod")
        if self.heartbeat_interval_s * 2 > self.heartbeat_ttl_s:
            raise ValueError("DIFFV2S_HEARTBEAT_TTL_S must be at least twice DIFFV2S_HEARTBEAT_INTERVAL_S")
        return self

    @property
    def video_limits(self) -> VideoLimits:
        """The gateway's video limits (`CommonSettings`: the same DIFFV2S_MAX_VIDEO_* variables), checked
        again before a job's video is decoded."""
        return VideoLimits(**self.video_limit_kwargs)

    @property
    def task_threads(self) -> int:
        return max(self.concurrency or self.max_batch_size, self.max_batch_size)

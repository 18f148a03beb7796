"""Worker metrics (Prometheus), served by the worker itself on `metrics_port` (0 = off).

One worker process per GPU, each on its own port; histograms only, and no job id in any label.
"""

from __future__ import annotations

import functools
import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

JOBS_FINISHED = Counter("diffv2s_jobs_finished", "Jobs finished by outcome", ["outcome"])
QUEUE_WAIT = Histogram("diffv2s_queue_wait_seconds", "Job created -> started on the model", buckets=_SECONDS)
STAGE_SECONDS = Histogram(
    "diffv2s_stage_seconds", "Model time per stage of a batch", ["stage"], buckets=_SECONDS
)
BATCH_SIZE = Histogram(
    "diffv2s_batch_size", "Jobs per model batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
JOB_DURATION = Histogram("diffv2s_job_duration_seconds", "Job created -> finished", buckets=_SECONDS)
REAL_TIME_FACTOR = Histogram(
    "diffv2s_real_time_factor",
    "Model processing time / audio seconds (below 1 = faster than real time)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
)
JOBS_IN_PROGRESS = Gauge(
    "diffv2s_jobs_in_progress", "Jobs this worker holds (waiting in its batcher or running)"
)
WORKER_UP = Gauge("diffv2s_worker_up", "1 while the worker is consuming jobs")
MODEL_LOADED = Gauge("diffv2s_model_loaded", "1 once the model is loaded and warmed up")
MODEL_LIVE = Gauge(
    "diffv2s_model_live",
    "1 while the model thread is live (it ticked within DIFFV2S_MODEL_STALL_S); the healthcheck reads it",
)
ENGINE_INFO = Gauge("diffv2s_engine_info", "The inference engine of this worker (value 1)", ["engine"])

STAGES = ("preprocess", "encoder", "speaker", "sampling", "vocoder")

for _outcome in ("succeeded", "failed", "canceled"):
    JOBS_FINISHED.labels(_outcome)  # export zeros, so rate() works from the first job on
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)  # likewise: a series born at count 1 has no rate() until its second batch


def serve(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("worker metrics on :%d/metrics", port)


def track_gpu_memory() -> None:
    """Export the allocator's bytes in use, read at scrape time (only when CUDA is present)."""
    import torch

    if not torch.cuda.is_available():
        return
    gauge = Gauge("diffv2s_gpu_memory_bytes", "GPU memory allocated by this worker", ["device"])
    for i in range(torch.cuda.device_count()):
        gauge.labels(str(i)).set_function(functools.partial(_allocated, i))


def _allocated(device: int) -> float:
    import torch

    return float(torch.cuda.memory_allocated(device))

"""Worker metrics (Prometheus), served by the worker itself on `metrics_port` (0 = off).

One worker process per GPU, each on its own port; histograms only, and no job id in any label.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

JOBS_FINISHED = Counter("diffv2s_jobs_finished", "Jobs finished by outcome", ["outcome"])
JOBS_RECOVERED = Counter(
    "diffv2s_jobs_recovered",
    "Jobs put back in the queue by reason: worker_lost, orphaned, message_lost (watchdog), handed_back (shutdown)",
    ["reason"],
)
JOBS_LOST = Counter(
    "diffv2s_jobs_worker_lost", "Jobs failed with worker_lost: their workers stopped max_attempts times"
)
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
for _reason in ("worker_lost", "orphaned", "message_lost", "handed_back"):
    JOBS_RECOVERED.labels(_reason)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)  # likewise: a series born at count 1 has no rate() until its second batch


def serve(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("worker metrics on :%d/metrics", port)


class GpuMemory(Collector):
    """NVML's used and total memory of each GPU (or MIG device) this worker uses, read at scrape time and
    labelled with the device's UUID: `diffv2s_gpu_memory_bytes{gpu}`, `diffv2s_gpu_memory_total_bytes{gpu}`.

    NVML sees the whole device, so TensorRT's and ONNX Runtime's memory and the CUDA context count, not only
    PyTorch's allocator (one worker per GPU makes the device's figure the worker's). The UUID names the
    same device in `nvidia-smi`, the GPU claim (deploy/docker/entrypoint.sh) and the engine folder.
    """

    def __init__(self, nvml: Any, devices: list[tuple[str, Any]]) -> None:
        self.nvml = nvml
        self.devices = devices  # (uuid, NVML handle)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "diffv2s_gpu_memory_bytes", "GPU memory in use on the worker's GPU (NVML)", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "diffv2s_gpu_memory_total_bytes", "GPU memory of the worker's GPU (NVML)", labels=["gpu"]
        )
        for uuid, handle in self.devices:
            try:
                info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except self.nvml.NVMLError as exc:  # e.g. the GPU fell off the bus: no sample, scrape goes on
                log.warning("NVML cannot read the memory of GPU %s: %s", uuid, exc)
                continue
            used.add_metric([uuid], float(info.used))
            total.add_metric([uuid], float(info.total))
        yield used
        yield total


def _visible_gpus(nvml: Any) -> list[tuple[str, Any]]:
    """(uuid, handle) of the devices CUDA_VISIBLE_DEVICES names (GPU-/MIG- UUIDs, as the entrypoint's claim
    sets it, or NVML indices), or of every device when it is unset."""
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    else:
        handles = []
        for entry in (e.strip() for e in wanted.split(",") if e.strip()):
            if entry.isdigit():
                handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
            else:
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
    out = []
    for handle in handles:
        uuid = nvml.nvmlDeviceGetUUID(handle)
        out.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
    return out


def track_gpu_memory(registry: CollectorRegistry = REGISTRY) -> GpuMemory | None:
    """Export the memory of this worker's GPUs from NVML (package nvidia-ml-py, module `pynvml`, in the
    [gpu] extra). Without it, without a driver or without a GPU nothing is exported; returns the
    collector, or None then."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: GPU memory is not exported")
        return None
    try:
        pynvml.nvmlInit()
        devices = _visible_gpus(pynvml)
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): GPU memory is not exported", exc)
        return None
    if not devices:
        return None
    collector = GpuMemory(pynvml, devices)
    registry.register(collector)
    log.info("exporting GPU memory of %s", ", ".join(uuid for uuid, _ in devices))
    return collector

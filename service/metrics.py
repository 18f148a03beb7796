"""Gateway metrics (Prometheus).

Works under several uvicorn processes: when PROMETHEUS_MULTIPROC_DIR is set (by `python -m service`,
which also wipes it at start), every process writes its samples there and /metrics merges them. The
queue depth is not a per-process value: a custom collector reads it from the job store at scrape time.
Route labels are route templates (`/v1/jobs/{job_id}`), never ids.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import JobStore

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "diffv2s_http_requests",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "diffv2s_http_request_duration_seconds",
    "HTTP request duration (uploads included)",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_SUBMITTED = Counter("diffv2s_jobs_submitted", "Jobs accepted and queued")
# Any other method (PROPFIND, PURGE, made-up ones) is one label: a client cannot create series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class QueueDepthCollector(Collector):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            depth = self.store.queued_count()
        except Exception:
            return  # no sample beats a wrong one; the store being down shows in /readyz
        yield GaugeMetricFamily("diffv2s_queue_depth", "Jobs queued and not yet started", value=depth)


def render(store: JobStore) -> tuple[bytes, str]:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    depth = CollectorRegistry()
    depth.register(QueueDepthCollector(store))
    return body + generate_latest(depth), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: no body buffering, uploads stream through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            HTTP_REQUESTS.labels(template, method, str(status[0])).inc()
            HTTP_DURATION.labels(template, method).observe(time.perf_counter() - start)

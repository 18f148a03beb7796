"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.deps import QueueDep, SettingsDep, StorageDep, StoreDep
from service.errors import NotReady
from service.schemas import Health, NotReadyResponse, Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", response_model=Health, summary="The gateway process is alive", operation_id="getHealthz"
)
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": NotReadyResponse, "description": "A dependency is down or no worker is live."}},
    summary="Broker, job store and storage reachable, and at least one worker live",
    operation_id="getReadyz",
)
def readyz(store: StoreDep, storage: StorageDep, queue: QueueDep) -> Readiness:
    """A worker counts as live while its heartbeat is fresh, and a worker writes its heartbeat only
    while its model thread is live (`worker.model.ModelRuntime.model_live`), not merely loaded."""
    checks: dict[str, str] = {}
    for name, check in (("broker", queue.ping), ("store", store.ping), ("storage", storage.ping)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            # The raw error names paths and addresses: it goes to the log, never to the caller.
            log.warning("readiness: %s check failed: %s", name, exc)
            checks[name] = "error: unreachable"
    workers = 0
    if checks["store"] == "ok":
        try:
            workers = len(store.live_workers())
        except Exception as exc:
            log.warning("readiness: listing worker heartbeats failed: %s", exc)
            checks["store"] = "error: unreachable"
    checks["workers"] = "ok" if workers > 0 else "error: no live worker heartbeat"
    failed = [k for k, v in checks.items() if v != "ok"]
    if failed:
        raise NotReady(f"not ready: {', '.join(failed)}", checks=checks, workers=workers)
    return Readiness(checks=checks, workers=workers)


@router.get("/metrics", include_in_schema=False)
def get_metrics(store: StoreDep, settings: SettingsDep) -> Response:
    if not settings.metrics_enabled:
        raise StarletteHTTPException(404, "metrics are disabled (DIFFV2S_METRICS_ENABLED=false)")
    body, content_type = metrics.render(store)
    return Response(body, media_type=content_type)

"""The gateway's FastAPI app: wiring only (routes, errors, metrics, shared clients)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from jobs import open_store
from jobs.storage import open_storage
from service.api.routes import events, health, jobs, synthesize
from service.errors import install_error_handlers
from service.keys import KeyRing
from service.metrics import MetricsMiddleware
from service.queue import JobQueue
from service.ratelimit import KeyQuotas
from service.security import RequestContextMiddleware, install_log_request_ids
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Video-to-speech (DiffV2S). Upload a silent talking-face video, poll the job, download the speech.

1. `POST /v1/synthesize` (multipart `video` + options) → **202** with `Location: /v1/jobs/{id}`.
2. `GET /v1/jobs/{id}` until `status` is `succeeded` (or `failed` / `canceled`).
3. `GET /v1/jobs/{id}/audio` (WAV) and, with `output=mp4`, `GET /v1/jobs/{id}/video`.

Every error is `{"error": {"code", "message"}}`. Authenticate with `Authorization: Bearer <API key>`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = open_store(settings.store_url, settings.store_prefix, settings.record_ttl_s)
    storage = open_storage(settings)
    queue = JobQueue(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        store.close()

    app = FastAPI(
        title="DiffV2S video-to-speech",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_on else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_on else None,
        swagger_ui_oauth2_redirect_url="/docs/oauth2-redirect" if settings.docs_on else None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.storage = storage
    app.state.queue = queue
    app.state.keyring = KeyRing(settings.api_key_set)
    app.state.quotas = KeyQuotas(settings)
    install_log_request_ids()

    install_error_handlers(app, settings.retry_after_s)
    # Off unless origins are configured: without the middleware no CORS header is ever sent.
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "X-Request-ID", "Idempotent-Replayed"],
        )
    if settings.metrics_enabled:
        app.add_middleware(MetricsMiddleware)
    # Outermost: the request id and security headers are on every response, errors and 404s included.
    app.add_middleware(RequestContextMiddleware, docs_paths=frozenset({"/docs", "/docs/oauth2-redirect"}))
    app.include_router(synthesize.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.main:app_from_env` (settings from the environment)."""
    return create_app(Settings())

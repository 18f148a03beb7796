"""The gateway's FastAPI app: wiring only (routes, errors, metrics, shared clients)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

from jobs import open_store
from jobs.storage import open_storage
from service.api.routes import events, health, jobs, synthesize
from service.errors import install_error_handlers
from service.keys import KeyRing
from service.metrics import MetricsMiddleware
from service.queue import JobQueue
from service.ratelimit import KeyQuotas
from service.security import WEB_CSP, RequestContextMiddleware, docs_csp, install_log_request_ids
from service.settings import Settings

log = logging.getLogger(__name__)

# The web page: plain HTML, JS and CSS (no build step), shipped as package data.
STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_URL = "/docs"
DOCS_STATIC = "/docs/static"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

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
        # /docs is served below, with Swagger UI's files from the gateway itself (no CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_on else None,
        swagger_ui_oauth2_redirect_url=OAUTH2_REDIRECT_URL if settings.docs_on else None,
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
    page_csp = {"/": WEB_CSP}
    if settings.docs_on:
        page_csp |= install_docs(app)
    install_web_page(app)
    # Outermost: the request id and security headers are on every response, errors and 404s included.
    app.add_middleware(RequestContextMiddleware, page_csp=page_csp)
    app.include_router(synthesize.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    return app


def install_web_page(app: FastAPI) -> None:
    """`/`: the web page (service/static/index.html); its script, style and icon under `/static/`. Not in
    the OpenAPI schema."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )


def swagger_ui_dir() -> Path:
    """swagger-ui-py's copy of Swagger UI's files (found without importing the package)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "swagger-ui-py is not installed: /docs needs it (or set DIFFV2S_DOCS_ENABLED=false)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI) -> dict[str, str]:
    """`/docs` (Swagger UI) with its script, style and icon from the gateway under `/docs/static`; returns
    the policy of each page (their inline init scripts allowed by hash)."""
    assert app.openapi_url is not None
    app.mount(DOCS_STATIC, StaticFiles(directory=swagger_ui_dir()), name="swagger-ui")
    docs = bytes(
        get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        ).body
    ).decode()
    redirect = bytes(get_swagger_ui_oauth2_redirect_html().body).decode()

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(docs)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return HTMLResponse(redirect)

    return {DOCS_URL: docs_csp(docs), OAUTH2_REDIRECT_URL: docs_csp(redirect)}


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.main:app_from_env` (settings from the environment)."""
    return create_app(Settings())

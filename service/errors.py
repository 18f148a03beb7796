"""Every error the gateway returns, and the one place where errors become HTTP statuses.

Each response is `{"error": {"code": ..., "message": ...}}` with a stable code. Model-library input
errors (`diffv2s.errors`) map by type; service errors carry their own status. Nothing a client sends
can reach the 500 handler: bad input is always one of the typed errors below.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from diffv2s import errors as lib
from jobs import StoreUnavailable
from jobs.storage import StorageUnavailable
from service.schemas import ErrorResponse

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    retry_after = False  # add a Retry-After header (429 / 503)

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        # Overrides the configured Retry-After (e.g. when a rate-limit window resets).
        self.retry_after_s = retry_after_s
        # Fields beside `error` in the body (e.g. the checks of /readyz).
        self.extra = extra
        if code is not None:
            self.code = code


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class JobNotFound(ServiceError):
    status, code = 404, "job_not_found"


class NoVideoRequested(ServiceError):
    status, code = 404, "no_video_requested"


class IdempotencyKeyReused(ServiceError):
    status, code = 409, "idempotency_key_reused"


class ResultNotReady(ServiceError):
    status, code = 409, "result_not_ready"


class NoResult(ServiceError):
    """The job ended without a result (failed or canceled)."""

    status, code = 409, "no_result"


class JobNotCancelable(ServiceError):
    status, code = 409, "job_not_cancelable"


class ResultExpired(ServiceError):
    status, code = 410, "result_expired"


class UploadTooLarge(ServiceError):
    status, code = 413, "upload_too_large"


class NotMultipart(ServiceError):
    status, code = 415, "unsupported_media_type"


class BadRequest(ServiceError):
    """A malformed form (no video part, oversized field, broken multipart)."""

    status, code = 422, "invalid_request"


class QueueFull(ServiceError):
    status, code, retry_after = 429, "queue_full", True


class TooManyRequests(ServiceError):
    """A per-key quota: request rate, submission rate, jobs or uploads in flight."""

    status, code, retry_after = 429, "rate_limited", True


class BrokerUnavailable(ServiceError):
    status, code, retry_after = 503, "broker_unavailable", True


class NotReady(ServiceError):
    """/readyz: a dependency is down or no worker is live (the body adds `checks` and `workers`)."""

    status, code, retry_after = 503, "not_ready", True


# Model-library errors by type; the most specific class in an exception's MRO wins.
_LIBRARY_STATUS: dict[type[lib.DiffV2SError], int] = {
    lib.EmptyFile: 415,
    lib.UnsupportedVideo: 415,
    lib.NoVideoStream: 415,
    lib.InputError: 422,
    lib.DiffV2SError: 500,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
}


def status_for(exc: lib.DiffV2SError) -> int:
    for cls in type(exc).__mro__:
        if cls in _LIBRARY_STATUS:
            return _LIBRARY_STATUS[cls]
    return 500


def error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}, **extra}, status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = {}
        if exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after_s or retry_after_s)
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        return error_json(exc.status, exc.code, exc.message, headers or None, **exc.extra)

    async def on_library_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, lib.DiffV2SError)
        status = status_for(exc)
        if status >= 500:
            log.error("model library error on %s: %s", request.url.path, exc)
        return error_json(status, exc.code, exc.message)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_json(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_json(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        code = "store_unavailable" if isinstance(exc, StoreUnavailable) else "storage_unavailable"
        log.warning("%s on %s: %s", code, request.url.path, exc)
        return error_json(503, code, "the service is temporarily unavailable; retry later", retry)

    async def on_client_disconnect(request: Request, exc: Exception) -> Response:
        # The client went away mid-upload: nobody reads this answer. 499 (nginx's "client closed
        # request") keeps it out of the 5xx count and the logs free of tracebacks.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_json(500, "internal_error", "internal error")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(lib.DiffV2SError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StoreUnavailable, on_unavailable)
    app.add_exception_handler(StorageUnavailable, on_unavailable)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


_DESCRIPTIONS = {
    401: "Missing or unknown API key (`unauthorized`).",
    404: "No such job for this API key (`job_not_found`); jobs of other keys are not visible.",
    409: "Conflict: `idempotency_key_reused`, `result_not_ready`, `no_result` or `job_not_cancelable`.",
    410: "The result expired and was removed (`result_expired`).",
    413: "The upload is larger than the limit (`upload_too_large`).",
    415: "Not multipart/form-data, or the file is not a video (`unsupported_video`, `no_video_stream`, `empty_file`).",
    422: "Bad parameters or an unusable video (`invalid_parameter`, `invalid_request`, `video_too_long`, ...).",
    429: "Too many jobs waiting (`queue_full`) or a per-key quota reached (`rate_limited`, "
    "`too_many_jobs_in_flight`, `too_many_uploads_in_flight`); retry after `Retry-After` seconds.",
    503: "Broker, job store or storage unavailable; retry after `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[status] = entry
    return out

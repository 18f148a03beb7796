"""Typed errors: one class per HTTP status (grouped by family), a subclass per error code a caller may
want to handle on its own, all built from the `{"error": {"code", "message"}}` body.

    DiffV2SClientError
    ├── ApiError                      the server answered with an error status
    │   ├── ClientError (4xx)         BadRequest 400, Unauthorized 401, Forbidden 403, NotFound 404
    │   │                             (JobNotFound), Conflict 409 (IdempotencyKeyReused, ResultNotReady,
    │   │                             NoResult, JobNotCancelable), Gone 410 (ResultExpired),
    │   │                             PayloadTooLarge 413, UnsupportedMedia 415, Unprocessable 422
    │   │                             (InvalidParameter; the video's codes such as `no_face_found`),
    │   │                             TooManyRequests 429 (QueueFull)
    │   └── ServerError (5xx)         InternalError 500, ServiceUnavailable 503 (BrokerUnavailable, ...)
    ├── TransportError                no answer: connection refused, reset, timed out
    ├── UnexpectedResponse            an answer that is not what the API documents
    ├── JobFailed                     a job ended failed / canceled / expired (carries the job)
    └── WaitTimeout                   the job did not end in time (carries the last state seen)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

import httpx

if TYPE_CHECKING:
    from diffv2s_client.models import Job


class DiffV2SClientError(Exception):
    """Base of every error this package raises."""


class ApiError(DiffV2SClientError):
    status: ClassVar[int] = 0
    # Set on the subclasses made for one error code.
    code_name: ClassVar[str]

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None, body: object = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status_code = status
        self.code = code
        self.message = message
        # The server's Retry-After (seconds), on 429 and 503.
        self.retry_after_s = retry_after_s
        self.body = body


class ClientError(ApiError):
    """4xx: the request was refused; sending it again unchanged will not help (except 429)."""


class ServerError(ApiError):
    """5xx: the service failed or is unavailable."""


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class JobNotFound(NotFound):
    code_name = "job_not_found"


class NoVideoRequested(NotFound):
    code_name = "no_video_requested"


class Conflict(ClientError):
    status = 409


class IdempotencyKeyReused(Conflict):
    code_name = "idempotency_key_reused"


class ResultNotReady(Conflict):
    code_name = "result_not_ready"


class NoResult(Conflict):
    code_name = "no_result"


class JobNotCancelable(Conflict):
    code_name = "job_not_cancelable"


class Gone(ClientError):
    status = 410


class ResultExpired(Gone):
    code_name = "result_expired"


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMedia(ClientError):
    status = 415


class Unprocessable(ClientError):
    """422: a bad parameter, or a video the model cannot use (too short, too long, no face, ...)."""

    status = 422


class InvalidParameter(Unprocessable):
    code_name = "invalid_parameter"


class TooManyRequests(ClientError):
    status = 429


class QueueFull(TooManyRequests):
    code_name = "queue_full"


class InternalError(ServerError):
    status = 500


class ServiceUnavailable(ServerError):
    status = 503


class BrokerUnavailable(ServiceUnavailable):
    code_name = "broker_unavailable"


class StoreUnavailable(ServiceUnavailable):
    code_name = "store_unavailable"


class StorageUnavailable(ServiceUnavailable):
    code_name = "storage_unavailable"


class NotReady(ServiceUnavailable):
    code_name = "not_ready"


class TransportError(DiffV2SClientError):
    """The server could not be reached or did not answer (after the retries)."""


class UnexpectedResponse(DiffV2SClientError):
    """An answer the API does not document (e.g. not JSON, or a job body that does not decode)."""


class JobFailed(DiffV2SClientError):
    """The job ended without a result: failed (its error says why), canceled or expired."""

    def __init__(self, job: Job) -> None:
        err = job.error
        why = f" [{err.code}]: {err.message}" if err else ""
        super().__init__(f"job {job.id} {job.status.value}{why}")
        self.job = job
        self.code = err.code if err else job.status.value
        self.message = err.message if err else f"the job was {job.status.value}"


class WaitTimeout(DiffV2SClientError):
    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(f"job {job.id} still {job.status.value} after {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s


def _subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


# The most specific class: by error code, then by status, then by family.
BY_CODE: dict[str, type[ApiError]] = {
    c.code_name: c for c in _subclasses(ApiError) if "code_name" in c.__dict__
}
BY_STATUS: dict[int, type[ApiError]] = {
    c.status: c for c in _subclasses(ApiError) if "status" in c.__dict__ and "code_name" not in c.__dict__
}


def error_class(status: int, code: str) -> type[ApiError]:
    cls = BY_CODE.get(code)
    if cls is not None and cls.status == status:
        return cls
    if status in BY_STATUS:
        return BY_STATUS[status]
    if 400 <= status < 500:
        return ClientError
    if status >= 500:
        return ServerError
    return ApiError


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def from_response(response: httpx.Response) -> ApiError:
    """The typed error of an error response (its body read already)."""
    status = response.status_code
    body: object = None
    code, message = f"http_{status}", response.reason_phrase or "error"
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
    return error_class(status, code)(status, code, message, retry_after_seconds(response), body)

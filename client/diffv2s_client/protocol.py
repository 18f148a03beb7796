"""What the sync and async clients share: paths, the retry policy, response checks, the upload body and
the server-sent-events parser. No I/O here, so both clients stay thin loops around it."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from diffv2s_client.errors import (
    ApiError,
    DiffV2SClientError,
    TransportError,
    UnexpectedResponse,
    from_response,
    retry_after_seconds,
)
from diffv2s_client.models import Job, JobPage, JobStatus, Progress, SynthesisOptions, decode

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "DIFFV2S_API_KEY"
USER_AGENT = "diffv2s-client/0.1"

# A job event stream silent this long is reopened (a server sends keep-alives more often than that).
EVENT_READ_TIMEOUT_S = 30.0
EVENT_RECONNECTS = 3

ResultKind = Literal["audio", "video"]
VideoInput = str | os.PathLike[str] | bytes | IO[bytes]
JobRef = Job | str


def job_id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def job_path(job: JobRef, tail: str = "") -> str:
    return f"/v1/jobs/{job_id(job)}{tail}"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 / 503 (and of requests that got no answer), honouring `Retry-After`, bounded.

    A submission is safe to repeat: the client sends an `Idempotency-Key`, so a retried upload that the
    server had already accepted returns the same job.
    """

    max_retries: int = 5
    # The longest single wait: a longer Retry-After is cut to this.
    max_delay_s: float = 30.0
    # Without Retry-After (a dropped connection): backoff_s, 2 x, 4 x, ... up to max_delay_s.
    backoff_s: float = 0.5
    retry_statuses: frozenset[int] = frozenset({429, 503})

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_delay_s)
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_delay_s)

    def should_retry(self, attempt: int, error: DiffV2SClientError) -> bool:
        if attempt > self.max_retries:
            return False
        if isinstance(error, ApiError):
            return error.status_code in self.retry_statuses
        return isinstance(error, TransportError)


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to `on_retry` before each wait: which request, which retry, how long, and why."""

    method: str
    path: str
    attempt: int
    delay_s: float
    error: DiffV2SClientError


OnRetry = Callable[[RetryEvent], None]
OnUpdate = Callable[[Job], None]


def api_key_from_env(api_key: str | None) -> str | None:
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None


def base_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def with_video_output(
    options: SynthesisOptions | None, fields: dict[str, Any], video: bool
) -> tuple[SynthesisOptions | None, dict[str, Any]]:
    """Ask for `output=mp4` when the caller wants the dubbed video too."""
    if not video:
        return options, fields
    if options is not None:
        return dataclasses.replace(options, output="mp4"), fields
    return None, {**fields, "output": "mp4"}


def transport_error(exc: httpx.TransportError, method: str, url: str) -> TransportError:
    return TransportError(f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": "))


# A result download may be answered with a redirect to a short-lived presigned URL of the bucket (a
# gateway with DIFFV2S_STORAGE_PRESIGN_TTL_S > 0 answers 307): followed, at most this many hops.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


def redirect_target(response: httpx.Response) -> httpx.URL | None:
    """Where a redirect answer points (its Location, resolved against the request), else None."""
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or not location:
        return None
    return response.request.url.join(location)


def redirected_get(http: httpx.Client | httpx.AsyncClient, url: httpx.URL) -> httpx.Request:
    """The GET of a redirect target, without the API key: a presigned URL carries its own signature
    (S3 refuses a request that also has an Authorization header), and the key is for the gateway only,
    never sent to another host."""
    request = http.build_request("GET", url, headers={"Accept": "*/*"})
    request.headers.pop("Authorization", None)
    return request


def result_checked(response: httpx.Response, path: str) -> httpx.Response:
    """A result answer after its redirects: the response, or its typed error (body read already)."""
    if 300 <= response.status_code < 400:
        raise UnexpectedResponse(
            f"GET {path}: {response.status_code} after {MAX_REDIRECTS} redirects or without a Location"
        )
    return checked(response)


def checked(response: httpx.Response) -> httpx.Response:
    """The response, or its typed error (its body must have been read)."""
    if response.status_code >= 400:
        raise from_response(response)
    return response


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnexpectedResponse(
            f"{response.request.method} {response.request.url.path}: {response.status_code} "
            f"answer is not JSON: {response.text[:200]!r}"
        ) from None


def job_from(response: httpx.Response) -> Job:
    try:
        job = decode(Job, json_body(response))
    except ValueError as exc:
        raise UnexpectedResponse(f"not a job: {exc}") from None
    return dataclasses.replace(job, poll_after_s=retry_after_seconds(response))


def page_from(response: httpx.Response) -> JobPage:
    try:
        return decode(JobPage, json_body(response))
    except ValueError as exc:
        raise UnexpectedResponse(f"not a job list: {exc}") from None


class Upload:
    """The `video` part of a submission, readable again for each retry."""

    def __init__(self, video: VideoInput, filename: str | None = None) -> None:
        self._video = video
        self._start = 0
        if isinstance(video, bytes):
            self.filename = filename or "video.mp4"
        elif isinstance(video, str | os.PathLike):
            path = Path(video)
            if not path.is_file():
                raise FileNotFoundError(f"no such video file: {path}")
            self.filename = filename or path.name
        else:
            self.filename = filename or Path(getattr(video, "name", "video.mp4")).name
            self._start = video.tell()

    def open(self) -> IO[bytes]:
        """A file object positioned at the start of the video (the caller closes what it opened)."""
        if isinstance(self._video, bytes):
            return io.BytesIO(self._video)
        if isinstance(self._video, str | os.PathLike):
            return open(self._video, "rb")  # noqa: SIM115 - closed by the caller after the request
        self._video.seek(self._start)
        return self._video

    def close(self, fh: IO[bytes]) -> None:
        """Close what `open` opened (a caller's own file object stays open)."""
        if fh is not self._video:
            fh.close()

    def files(self, fh: IO[bytes]) -> dict[str, tuple[str, IO[bytes], str]]:
        return {"video": (self.filename, fh, "application/octet-stream")}


# --- server-sent events (GET /v1/jobs/{id}/events) ---


@dataclass
class ServerEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


class EventParser:
    """The `text/event-stream` format, one line at a time (without its line ending)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> ServerEvent | None:
        """The event that this line completes (an empty line dispatches), else None."""
        if line == "":
            if not self._data and not self._event:
                return None
            event = ServerEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
            self._event, self._data, self._retry = "", [], None
            return event
        if line.startswith(":"):  # a comment: keep-alive
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = self.last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


def apply_event(job: Job, event: ServerEvent) -> Job:
    """The job as an event leaves it. A data object with the job's fields (or with them under `job`) is
    taken whole; one with only
    `status` and/or progress (`step`, `total`) updates those; anything else changes nothing."""
    try:
        data = json.loads(event.data) if event.data else None
    except json.JSONDecodeError:
        return job
    if not isinstance(data, dict):
        return job
    # The whole job: the event's data itself, or under `job` (the service's terminal status event).
    nested_job = data.get("job")
    whole: dict[str, Any] = nested_job if isinstance(nested_job, dict) else data
    if whole.get("id") == job.id and "created_at" in whole and "urls" in whole:
        try:
            return decode(Job, whole)
        except ValueError:
            return job
    changes: dict[str, Any] = {}
    status = data.get("status")
    if isinstance(status, str) and status in JobStatus._value2member_map_:
        changes["status"] = JobStatus(status)
    nested = data.get("progress")
    progress: dict[str, Any] = nested if isinstance(nested, dict) else data
    if isinstance(progress.get("step"), int) and isinstance(progress.get("total"), int):
        changes["progress"] = Progress(progress["step"], progress["total"])
    return dataclasses.replace(job, **changes) if changes else job


def events_unsupported(response: httpx.Response) -> bool:
    """The server has no event stream (an older server): the route is missing, or answers no stream."""
    if response.status_code in (404, 405, 406, 501):
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return True
        return code != "job_not_found"  # a missing job is an error of its own, not a missing route
    if response.status_code == 200:
        return not response.headers.get("content-type", "").startswith("text/event-stream")
    return False

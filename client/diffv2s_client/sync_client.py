"""`Client`: the blocking client (httpx.Client). `AsyncClient` in `async_client` is its twin."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from diffv2s_client.errors import ApiError, DiffV2SClientError, JobFailed, WaitTimeout, from_response
from diffv2s_client.models import Job, JobPage, JobStatus, SynthesisOptions
from diffv2s_client.protocol import (
    DEFAULT_URL,
    EVENT_READ_TIMEOUT_S,
    EVENT_RECONNECTS,
    MAX_REDIRECTS,
    EventParser,
    JobRef,
    OnRetry,
    OnUpdate,
    ResultKind,
    RetryEvent,
    RetryPolicy,
    Upload,
    VideoInput,
    api_key_from_env,
    apply_event,
    base_headers,
    checked,
    events_unsupported,
    job_from,
    job_id,
    job_path,
    page_from,
    redirect_target,
    redirected_get,
    result_checked,
    transport_error,
    with_video_output,
)

T = TypeVar("T")


class Client:
    """A blocking client of the DiffV2S API.

        with Client("http://127.0.0.1:8000", api_key) as client:
            job = client.submit("clip.mp4", steps=10)
            job = client.wait(job, on_update=print)
            client.download(job, "speech.wav")

    `api_key` defaults to the `DIFFV2S_API_KEY` environment variable. Answers 429 and 503, and requests
    that got no answer, are retried under `retry` (honouring `Retry-After`); `on_retry` hears of each.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            headers=base_headers(api_key_from_env(api_key)),
            timeout=timeout_s,
            transport=transport,
        )
        # Whether the server offers GET /v1/jobs/{id}/events; None until a wait asked.
        self.events_supported: bool | None = None

    # --- lifecycle ---

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- requests with retries ---

    def _pause(self, method: str, path: str, attempt: int, error: DiffV2SClientError) -> None:
        """Wait before retry `attempt`, or raise `error` when the policy says no more."""
        if not self.retry.should_retry(attempt, error):
            raise error
        retry_after = error.retry_after_s if isinstance(error, ApiError) else None
        delay = self.retry.delay_s(attempt, retry_after)
        if self.on_retry is not None:
            self.on_retry(RetryEvent(method, path, attempt, delay, error))
        time.sleep(delay)

    def _request(
        self, method: str, path: str, *, upload: Upload | None = None, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            fh = upload.open() if upload is not None else None
            try:
                files = upload.files(fh) if upload is not None and fh is not None else None
                return checked(self._http.request(method, path, files=files, **kwargs))
            except httpx.TransportError as exc:
                error: DiffV2SClientError = transport_error(exc, method, path)
            except ApiError as exc:
                error = exc
            finally:
                if upload is not None and fh is not None:
                    upload.close(fh)
            self._pause(method, path, attempt, error)

    # --- the API ---

    def submit(
        self,
        video: VideoInput,
        options: SynthesisOptions | None = None,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Upload a video (a path, bytes or a binary file object) and queue a job; returns it queued.

        Sampling fields go as `options` or as keywords (`sampler`, `steps`, `seed`, `guidance`,
        `cfg_scale`, `noise_scale`, `output`). An `Idempotency-Key` is made when none is given, so the
        retries of one call can never create two jobs.
        """
        if options is not None and fields:
            raise TypeError("pass either options or keyword fields, not both")
        form = (options or SynthesisOptions(**fields)).form()
        key = idempotency_key or uuid.uuid4().hex
        response = self._request(
            "POST",
            "/v1/synthesize",
            upload=Upload(video, filename),
            data=form,
            headers={"Idempotency-Key": key},
        )
        return job_from(response)

    def get(self, job: JobRef) -> Job:
        return job_from(self._request("GET", job_path(job)))

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobPage:
        """One page of the caller's jobs, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return page_from(self._request("GET", "/v1/jobs", params=params))

    def cancel(self, job: JobRef) -> Job:
        """Cancel a queued or preparing job (`JobNotCancelable` once it runs or ended)."""
        return job_from(self._request("POST", job_path(job, "/cancel")))

    def wait(
        self,
        job: JobRef,
        *,
        timeout_s: float | None = None,
        poll_interval_s: float = 1.0,
        on_update: OnUpdate | None = None,
        events: bool = True,
    ) -> Job:
        """Block until the job ends (succeeded, failed, canceled or expired) and return it.

        Follows the server's event stream when it offers one (`events=True`), else polls the job every
        `poll_interval_s` or the server's `Retry-After`, whichever is longer. `on_update` gets each new
        state. Raises `WaitTimeout` after `timeout_s`.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        current = job if isinstance(job, Job) else self.get(job)
        if on_update is not None:
            on_update(current)
        if events and self.events_supported is not False and not current.terminal:
            current = self._follow_events(current, deadline, on_update)
        while not current.terminal:
            delay = max(poll_interval_s, current.poll_after_s or 0.0)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(current, timeout_s or 0.0)
                delay = min(delay, remaining)
            time.sleep(delay)
            latest = self.get(current.id)
            if on_update is not None and latest != current:
                on_update(latest)
            current = latest
        return current

    def _follow_events(self, current: Job, deadline: float | None, on_update: OnUpdate | None) -> Job:
        """Follow GET /v1/jobs/{id}/events until a terminal state; return early (to polling) when the
        server has no stream, the stream keeps failing or the deadline passes."""
        last_id: str | None = None
        failures = 0
        while not current.terminal and failures <= EVENT_RECONNECTS:
            read_s = EVENT_READ_TIMEOUT_S
            if deadline is not None:
                read_s = min(read_s, deadline - time.monotonic())
                if read_s <= 0:
                    return current
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            timeout = httpx.Timeout(self.timeout_s, read=read_s)
            parser = EventParser()
            try:
                with self._http.stream(
                    "GET", job_path(current, "/events"), headers=headers, timeout=timeout
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                    if events_unsupported(r):
                        self.events_supported = False
                        return current
                    if r.status_code >= 400:
                        error = from_response(r)
                        if error.status_code in self.retry.retry_statuses:
                            return current  # busy: polling honours Retry-After
                        raise error
                    self.events_supported = True
                    for line in r.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        latest = apply_event(current, event)
                        if on_update is not None and latest != current:
                            on_update(latest)
                        current = latest
                        if current.terminal:
                            break
            except httpx.TransportError:
                failures += 1
            last_id = parser.last_id or last_id
            # The stream ended (or broke): the job's authoritative state, with its result URLs.
            latest = self.get(current.id)
            if on_update is not None and latest != current:
                on_update(latest)
            current = latest
        return current

    @contextmanager
    def _result_response(self, path: str) -> Iterator[httpx.Response]:
        """The streamed answer of GET `path` (a result). A redirect, a gateway's 307 to a presigned URL
        of the bucket, is followed without the API key (see `protocol.redirected_get`)."""
        r = self._http.send(self._http.build_request("GET", path), stream=True, follow_redirects=False)
        try:
            for _ in range(MAX_REDIRECTS):
                target = redirect_target(r)
                if target is None:
                    break
                r.close()
                r = self._http.send(redirected_get(self._http, target), stream=True, follow_redirects=False)
            if r.status_code >= 300:
                r.read()
            yield result_checked(r, path)
        finally:
            r.close()

    def _fetch_result(self, job: JobRef, kind: ResultKind, consume: Callable[[httpx.Response], T]) -> T:
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be 'audio' or 'video', not {kind!r}")
        url = job_path(job, f"/{kind}")
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._result_response(url) as r:
                    return consume(r)
            except httpx.TransportError as exc:
                error: DiffV2SClientError = transport_error(exc, "GET", url)
            except ApiError as exc:
                error = exc
            # A retry asks the gateway again (a fresh presigned URL when it redirects).
            self._pause("GET", url, attempt, error)

    def download(self, job: JobRef, path: str | os.PathLike[str], *, kind: ResultKind = "audio") -> Path:
        """Stream the WAV (`kind="audio"`) or the mp4 with the new soundtrack (`"video"`) to `path`.

        The file appears complete or not at all (written beside it, then renamed). When the gateway
        redirects to the bucket (a presigned URL), the bytes come from there, without the API key.
        """
        dest = Path(path)

        def save(r: httpx.Response) -> Path:
            # Opened like any new file (the umask applies), under a name of its own.
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
            try:
                with open(tmp, "xb") as out:
                    for chunk in r.iter_bytes():
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return dest

        return self._fetch_result(job, kind, save)

    def read_result(self, job: JobRef, *, kind: ResultKind = "audio") -> bytes:
        """The WAV or mp4 bytes in memory (a redirect to the bucket is followed, as by `download`)."""
        return self._fetch_result(job, kind, lambda r: r.read())

    def synthesize(
        self,
        video: VideoInput,
        audio_path: str | os.PathLike[str],
        *,
        video_path: str | os.PathLike[str] | None = None,
        options: SynthesisOptions | None = None,
        timeout_s: float | None = None,
        on_update: OnUpdate | None = None,
        **fields: Any,
    ) -> Job:
        """Submit, wait and download in one call; raises `JobFailed` when the job ends without a result."""
        options, fields = with_video_output(options, fields, video_path is not None)
        job = self.submit(video, options, **fields)
        job = self.wait(job, timeout_s=timeout_s, on_update=on_update)
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        self.download(job, audio_path)
        if video_path is not None:
            self.download(job, video_path, kind="video")
        return job


__all__ = ["Client", "job_id"]

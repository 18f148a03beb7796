"""`AsyncClient`: the asyncio twin of `sync_client.Client` (httpx.AsyncClient); same methods, awaited."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
    job_path,
    page_from,
    redirect_target,
    redirected_get,
    result_checked,
    transport_error,
    with_video_output,
)

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of the DiffV2S API; see `Client` for what each method does.

    async with AsyncClient("http://127.0.0.1:8000", api_key) as client:
        job = await client.submit("clip.mp4", steps=10)
        job = await client.wait(job)
        await client.download(job, "speech.wav")
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=base_headers(api_key_from_env(api_key)),
            timeout=timeout_s,
            transport=transport,
        )
        # Whether the server offers GET /v1/jobs/{id}/events; None until a wait asked.
        self.events_supported: bool | None = None

    # --- lifecycle ---

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- requests with retries ---

    async def _pause(self, method: str, path: str, attempt: int, error: DiffV2SClientError) -> None:
        """Wait before retry `attempt`, or raise `error` when the policy says no more."""
        if not self.retry.should_retry(attempt, error):
            raise error
        retry_after = error.retry_after_s if isinstance(error, ApiError) else None
        delay = self.retry.delay_s(attempt, retry_after)
        if self.on_retry is not None:
            self.on_retry(RetryEvent(method, path, attempt, delay, error))
        await asyncio.sleep(delay)

    async def _request(
        self, method: str, path: str, *, upload: Upload | None = None, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            fh = upload.open() if upload is not None else None
            try:
                files = upload.files(fh) if upload is not None and fh is not None else None
                return checked(await self._http.request(method, path, files=files, **kwargs))
            except httpx.TransportError as exc:
                error: DiffV2SClientError = transport_error(exc, method, path)
            except ApiError as exc:
                error = exc
            finally:
                if upload is not None and fh is not None:
                    upload.close(fh)
            await self._pause(method, path, attempt, error)

    # --- the API ---

    async def submit(
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
        response = await self._request(
            "POST",
            "/v1/synthesize",
            upload=Upload(video, filename),
            data=form,
            headers={"Idempotency-Key": key},
        )
        return job_from(response)

    async def get(self, job: JobRef) -> Job:
        return job_from(await self._request("GET", job_path(job)))

    async def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobPage:
        """One page of the caller's jobs, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return page_from(await self._request("GET", "/v1/jobs", params=params))

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a queued or preparing job (`JobNotCancelable` once it runs or ended)."""
        return job_from(await self._request("POST", job_path(job, "/cancel")))

    async def wait(
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
        current = job if isinstance(job, Job) else await self.get(job)
        if on_update is not None:
            on_update(current)
        if events and self.events_supported is not False and not current.terminal:
            current = await self._follow_events(current, deadline, on_update)
        while not current.terminal:
            delay = max(poll_interval_s, current.poll_after_s or 0.0)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(current, timeout_s or 0.0)
                delay = min(delay, remaining)
            await asyncio.sleep(delay)
            latest = await self.get(current.id)
            if on_update is not None and latest != current:
                on_update(latest)
            current = latest
        return current

    async def _follow_events(self, current: Job, deadline: float | None, on_update: OnUpdate | None) -> Job:
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
                async with self._http.stream(
                    "GET", job_path(current, "/events"), headers=headers, timeout=timeout
                ) as r:
                    if r.status_code >= 400:
                        await r.aread()
                    if events_unsupported(r):
                        self.events_supported = False
                        return current
                    if r.status_code >= 400:
                        error = from_response(r)
                        if error.status_code in self.retry.retry_statuses:
                            return current  # busy: polling honours Retry-After
                        raise error
                    self.events_supported = True
                    async for line in r.aiter_lines():
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
            latest = await self.get(current.id)
            if on_update is not None and latest != current:
                on_update(latest)
            current = latest
        return current

    @asynccontextmanager
    async def _result_response(self, path: str) -> AsyncIterator[httpx.Response]:
        """The streamed answer of GET `path`; a redirect to the bucket is followed without the API key."""
        http = self._http
        r = await http.send(http.build_request("GET", path), stream=True, follow_redirects=False)
        try:
            for _ in range(MAX_REDIRECTS):
                target = redirect_target(r)
                if target is None:
                    break
                await r.aclose()
                r = await http.send(redirected_get(http, target), stream=True, follow_redirects=False)
            if r.status_code >= 300:
                await r.aread()
            yield result_checked(r, path)
        finally:
            await r.aclose()

    async def _fetch_result(
        self, job: JobRef, kind: ResultKind, consume: Callable[[httpx.Response], Awaitable[T]]
    ) -> T:
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be 'audio' or 'video', not {kind!r}")
        url = job_path(job, f"/{kind}")
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._result_response(url) as r:
                    return await consume(r)
            except httpx.TransportError as exc:
                error: DiffV2SClientError = transport_error(exc, "GET", url)
            except ApiError as exc:
                error = exc
            await self._pause("GET", url, attempt, error)

    async def download(
        self, job: JobRef, path: str | os.PathLike[str], *, kind: ResultKind = "audio"
    ) -> Path:
        """Stream the WAV (`kind="audio"`) or the mp4 with the new soundtrack (`"video"`) to `path`.

        The file appears complete or not at all (written beside it, then renamed). When the gateway
        redirects to the bucket (a presigned URL), the bytes come from there, without the API key.
        """
        dest = Path(path)

        async def save(r: httpx.Response) -> Path:
            # Opened like any new file (the umask applies), under a name of its own.
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
            try:
                with open(tmp, "xb") as out:
                    async for chunk in r.aiter_bytes():
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return dest

        return await self._fetch_result(job, kind, save)

    async def read_result(self, job: JobRef, *, kind: ResultKind = "audio") -> bytes:
        """The WAV or mp4 bytes in memory (a redirect to the bucket is followed, as by `download`)."""

        async def read(r: httpx.Response) -> bytes:
            return await r.aread()

        return await self._fetch_result(job, kind, read)

    async def synthesize(
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
        job = await self.submit(video, options, **fields)
        job = await self.wait(job, timeout_s=timeout_s, on_update=on_update)
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        await self.download(job, audio_path)
        if video_path is not None:
            await self.download(job, video_path, kind="video")
        return job


__all__ = ["AsyncClient"]

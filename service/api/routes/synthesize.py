"""POST /v1/synthesize: accept a video, queue a job, answer 202 at once (or, with `Prefer: wait=N`, the
finished job when it ends within N seconds)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from diffv2s.config import VideoConfig
from diffv2s.errors import InvalidParameter, VideoTooShort
from diffv2s.video.decode import probe_video
from jobs import TERMINAL, IdempotencyConflict, JobRecord, JobStatus
from jobs.record import dumps, now
from jobs.webhooks import WebhookRefused, check_target, parse_events, publish_follow
from service import metrics
from service.api.routes.events import wait_for_end
from service.deps import OwnerDep, QueueDep, QuotasDep, SettingsDep, StorageDep, StoreDep
from service.errors import BrokerUnavailable, IdempotencyKeyReused, QueueFull, error_responses
from service.queue import BrokerError
from service.schemas import Job, SynthesisForm, SynthesisFormBase
from service.security import request_id_var
from service.upload import FILE_FIELD, receive_upload

router = APIRouter(tags=["synthesis"])

# Containers the gateway opens (mp4/mov, matroska/webm, avi), as part types; octet-stream for clients that
# do not know the type of a file (the container's header decides).
VIDEO_MEDIA_TYPES = (
    "video/mp4",
    "video/quicktime",
    "video/x-matroska",
    "video/webm",
    "video/x-msvideo",
    "application/octet-stream",
)

_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A talking-face video (mp4, mov, mkv, webm, avi); no audio needed.",
                        },
                        **{
                            name: {k: v for k, v in prop.items() if k not in ("title",)}
                            for name, prop in SynthesisForm.model_json_schema()["properties"].items()
                        },
                    },
                },
                # The part's declared type is not trusted (the gateway reads the container's header and
                # answers 415 for anything else), but these are the types it accepts.
                "encoding": {FILE_FIELD: {"contentType": ", ".join(VIDEO_MEDIA_TYPES)}},
            }
        },
    }
}

# OpenAPI links: what a client (or a stateful fuzzer) can do with the job a submission answers.
JOB_LINKS: dict[str, Any] = {
    name: {
        "operationId": operation,
        "parameters": {"job_id": "$response.body#/id"},
        "description": description,
    }
    for name, operation, description in (
        ("GetJob", "getJob", "Poll the job's state."),
        ("GetJobEvents", "getJobEvents", "Follow the job's status and progress as Server-Sent Events."),
        ("GetJobAudio", "getJobAudio", "Download the speech once the job succeeded."),
        ("GetJobVideo", "getJobVideo", "Download the dubbed video (output=mp4) once the job succeeded."),
        ("CancelJob", "cancelJob", "Cancel the job while it is queued or preparing."),
    )
}


def _form(fields: dict[str, str]) -> SynthesisFormBase:
    try:
        # An empty field means "use the default", as HTML forms send unset inputs.
        return SynthesisForm.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise InvalidParameter("; ".join(parts)) from exc


@router.post(
    "/v1/synthesize",
    status_code=202,
    response_model=Job,
    summary="Submit a video; speech is synthesized in the background",
    openapi_extra=_FORM_SCHEMA,
    operation_id="synthesize",
    responses={
        200: {
            "description": "With `Prefer: wait=N`: the job ended within N seconds (succeeded, failed or "
            "canceled).",
            "headers": {"Preference-Applied": {"schema": {"type": "string"}, "description": "wait=N"}},
            "links": JOB_LINKS,
        },
        202: {
            "description": "Queued (or the job already created with this Idempotency-Key).",
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The job: /v1/jobs/{id}"},
                "Retry-After": {
                    "schema": {"type": "integer"},
                    "description": "Seconds before the first poll",
                },
            },
            "links": JOB_LINKS,
        },
        **error_responses(401, 409, 413, 415, 422, 429, 503),
    },
)
async def synthesize(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    queue: QueueDep,
    quotas: QuotasDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Same key and same request: the same job again. Same key, other request: 409.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            max_length=200,
            description="`wait=N` (N <= 60): answer 200 with the finished job if it ends within N seconds "
            "(with `Preference-Applied: wait=N`), else the usual 202.",
        ),
    ] = None,
) -> JSONResponse:
    # Admission control before reading the body: a full queue or a key over its quota costs no upload.
    if await run_in_threadpool(store.queued_count) >= settings.queue_max_depth:
        raise QueueFull(f"{settings.queue_max_depth} jobs are waiting; retry later")
    await run_in_threadpool(quotas.check_in_flight, store, owner, settings.retry_after_s)
    await run_in_threadpool(quotas.hit_submission, owner)

    job_id = str(uuid.uuid4())
    with quotas.upload_slot(owner, settings.retry_after_s):
        upload = await receive_upload(request, storage, job_id, settings.max_upload_bytes)
    assert upload.key is not None
    key = upload.key
    try:
        form = _form(upload.fields)
        params = form.params()
        webhook_url, webhook_events = await _webhook(form, owner, settings)
        # Headers only (milliseconds; no frame over the pixel limit is decoded): a non-video, or a video
        # over the pixel, frame-rate or frame-count limits, never reaches the queue.
        limits = settings.video_limits
        probe = await run_in_threadpool(storage.on_local_copy, key, probe_video, limits)
        probe.check(VideoConfig(max_seconds=settings.max_video_seconds))
        limits.check(probe)
        if 0 < probe.duration < settings.min_video_seconds:
            raise VideoTooShort(
                f"The video is {probe.duration:.2f} s long; at least {settings.min_video_seconds:g} s is needed."
            )
        request_hash = hashlib.sha256(
            dumps({"form": form.model_dump(), "video_sha256": upload.sha256}).encode()
        ).hexdigest()
        record = JobRecord(
            id=job_id,
            owner=owner,
            status=JobStatus.QUEUED,
            created_at=now(),
            params=params.as_dict(),
            output=form.output,
            input_key=key,
            request_hash=request_hash,
            idempotency_key=idempotency_key,
            video_seconds=round(probe.duration, 4),
            priority=_capped(form.priority, settings.priority_cap(owner)),
            deadline_at=_deadline(form.deadline_s, settings.max_deadline_s),
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            request_id=request_id_var.get(),
        )
        job, created = await run_in_threadpool(store.create, record, settings.result_ttl_s)
    except IdempotencyConflict as exc:
        storage.delete(key)
        raise IdempotencyKeyReused(
            f"Idempotency-Key already used for a different request (job {exc.job_id})"
        ) from exc
    except BaseException:
        storage.delete(key)  # an unlink: fast, and must run even when the request was cancelled
        raise

    headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": str(settings.poll_after_s)}
    if not created:
        await run_in_threadpool(storage.delete, key)
        headers["Idempotent-Replayed"] = "true"
        return await _answer(settings, store, job, headers, prefer)

    try:
        if job.webhook_url:  # before the job's own message: no event can happen unfollowed
            await run_in_threadpool(publish_follow, settings.webhooks, job.id)
        await run_in_threadpool(queue.enqueue, job.id, job.priority)
    except BrokerError as exc:
        await run_in_threadpool(store.delete, job.id)
        await run_in_threadpool(storage.delete, key)
        raise BrokerUnavailable("the job queue is unavailable; retry later") from exc
    metrics.JOBS_SUBMITTED.inc()
    return await _answer(settings, store, job, headers, prefer)


_PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2}


def _capped(priority: str, cap: str) -> str:
    return priority if _PRIORITY_RANK[priority] <= _PRIORITY_RANK[cap] else cap


def _deadline(deadline_s: float | None, max_deadline_s: float) -> float | None:
    if deadline_s is None:
        return None
    if deadline_s > max_deadline_s:
        raise InvalidParameter(f"deadline_s: at most {max_deadline_s:g} seconds")
    return now() + deadline_s


async def _webhook(
    form: SynthesisFormBase, owner: str, settings: SettingsDep
) -> tuple[str | None, list[str] | None]:
    """The webhook target (resolved and checked against the address policy) and its events."""
    if not form.webhook:
        if form.webhook_events:
            raise InvalidParameter("webhook_events: needs a webhook URL")
        return None, None
    hooks = settings.webhooks
    try:
        events = parse_events(form.webhook_events)
        if hooks.secret_for(owner) is None:
            raise WebhookRefused("webhook: no webhook secret is configured for this API key")
        await run_in_threadpool(check_target, form.webhook, hooks.allow_networks)
    except WebhookRefused as exc:
        raise InvalidParameter(str(exc)) from exc
    return form.webhook, events


def prefer_wait(prefer: str | None, limit_s: int) -> int | None:
    """N of a `Prefer: wait=N` header (RFC 7240), at most `limit_s`; None without one."""
    for part in (prefer or "").replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0, min(int(value.strip().strip('"')), limit_s))
            except ValueError:
                raise InvalidParameter("Prefer: wait=N needs a whole number of seconds") from None
    return None


async def _answer(
    settings: SettingsDep, store: StoreDep, job: JobRecord, headers: dict[str, str], prefer: str | None
) -> JSONResponse:
    """202 with the job, or with `Prefer: wait=N` the finished job (200) when it ends within N seconds."""
    wait_s = prefer_wait(prefer, settings.max_prefer_wait_s)
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
        if job.status not in TERMINAL:
            job = await wait_for_end(settings, store, job.id, wait_s) or job
        if job.status in TERMINAL:
            del headers["Retry-After"]
            return JSONResponse(
                Job.from_record(job).model_dump(mode="json"), status_code=200, headers=headers
            )
    return JSONResponse(Job.from_record(job).model_dump(mode="json"), status_code=202, headers=headers)

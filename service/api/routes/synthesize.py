"""POST /v1/synthesize: accept a video, queue a job, answer 202 at once."""

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
from jobs import IdempotencyConflict, JobRecord, JobStatus
from jobs.record import dumps, now
from service import metrics
from service.deps import OwnerDep, QueueDep, QuotasDep, SettingsDep, StorageDep, StoreDep
from service.errors import BrokerUnavailable, IdempotencyKeyReused, QueueFull, error_responses
from service.queue import BrokerError
from service.schemas import Job, SynthesisForm, SynthesisFormBase
from service.upload import FILE_FIELD, receive_upload

router = APIRouter(tags=["synthesis"])

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
                }
            }
        },
    }
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
    responses={
        202: {
            "description": "Queued (or the job already created with this Idempotency-Key).",
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The job: /v1/jobs/{id}"},
                "Retry-After": {
                    "schema": {"type": "integer"},
                    "description": "Seconds before the first poll",
                },
            },
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
        # Headers only (milliseconds; no frame over the pixel limit is decoded): a non-video, or a video
        # over the pixel, frame-rate or frame-count limits, never reaches the queue.
        limits = settings.video_limits
        probe = await run_in_threadpool(probe_video, storage.local_path(key), limits)
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
        return JSONResponse(Job.from_record(job).model_dump(mode="json"), status_code=202, headers=headers)

    try:
        await run_in_threadpool(queue.enqueue, job.id)
    except BrokerError as exc:
        await run_in_threadpool(store.delete, job.id)
        await run_in_threadpool(storage.delete, key)
        raise BrokerUnavailable("the job queue is unavailable; retry later") from exc
    metrics.JOBS_SUBMITTED.inc()
    return JSONResponse(Job.from_record(job).model_dump(mode="json"), status_code=202, headers=headers)

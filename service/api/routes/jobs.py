"""Job status, listing, downloads and cancel. A key sees only its own jobs (others' read as 404)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from diffv2s.errors import InvalidParameter
from jobs import JobRecord, JobStatus, JobStore, lifecycle
from jobs.record import decode_cursor
from jobs.storage import Storage
from service.deps import OwnerDep, StorageDep, StoreDep
from service.errors import (
    JobNotCancelable,
    JobNotFound,
    NoResult,
    NoVideoRequested,
    ResultExpired,
    ResultNotReady,
    error_responses,
)
from service.schemas import Job, JobList

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _own_job(store: JobStore, owner: str, job_id: str) -> JobRecord:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(f"no job {job_id!r}") from None
    job = store.get(job_id)
    if job is None or job.owner != owner:
        raise JobNotFound(f"no job {job_id!r}")
    return job


@router.get(
    "/{job_id}",
    response_model=Job,
    responses=error_responses(401, 404, 503),
    summary="A job's state",
    operation_id="getJob",
)
def get_job(job_id: str, owner: OwnerDep, store: StoreDep) -> Job:
    return Job.from_record(_own_job(store, owner, job_id))


@router.get(
    "",
    response_model=JobList,
    responses=error_responses(401, 422, 503),
    summary="The caller's jobs, newest first",
    operation_id="listJobs",
)
def list_jobs(
    owner: OwnerDep,
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobList:
    if cursor:
        try:
            decode_cursor(cursor)
        except (ValueError, UnicodeDecodeError):
            raise InvalidParameter("cursor: not a cursor returned by this API") from None
    jobs, next_cursor = store.list_jobs(owner, status, limit, cursor)
    return JobList(jobs=[Job.from_record(j) for j in jobs], next_cursor=next_cursor)


def _result(job: JobRecord, storage: StorageDep, key: str | None) -> str:
    if job.is_expired():
        raise ResultExpired("the result expired and was removed")
    if job.status in (JobStatus.QUEUED, JobStatus.PREPARING, JobStatus.RUNNING):
        raise ResultNotReady(f"the job is {job.status}; poll /v1/jobs/{job.id} until it succeeded")
    if job.status != JobStatus.SUCCEEDED or key is None:
        raise NoResult(f"the job {job.status} and has no result")
    if not storage.exists(key):
        raise ResultExpired("the result was removed")
    return key


def _send(storage: Storage, key: str, media_type: str, filename: str) -> Response:
    """Local storage: the file itself. Object storage: a 307 to a short-lived presigned URL when
    DIFFV2S_STORAGE_PRESIGN_TTL_S is set, else the object streamed through the gateway."""
    url = storage.presigned_url(key, filename, media_type)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = storage.direct_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, filename=filename)
    size, chunks = storage.iter_bytes(key)
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


@router.get(
    "/{job_id}/audio",
    response_class=FileResponse,
    responses={
        200: {"content": {"audio/wav": {}}, "description": "The synthesized speech (16-bit PCM WAV)."},
        **error_responses(401, 404, 409, 410, 503),
    },
    summary="Download the speech (WAV)",
    operation_id="getJobAudio",
)
def get_audio(job_id: str, owner: OwnerDep, store: StoreDep, storage: StorageDep) -> Response:
    job = _own_job(store, owner, job_id)
    key = _result(job, storage, job.audio_key)
    return _send(storage, key, "audio/wav", f"{job.id}.wav")


@router.get(
    "/{job_id}/video",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "The input video with the new soundtrack."},
        **error_responses(401, 404, 409, 410, 503),
    },
    summary="Download the video with its new soundtrack (when output=mp4)",
    operation_id="getJobVideo",
)
def get_video(job_id: str, owner: OwnerDep, store: StoreDep, storage: StorageDep) -> Response:
    job = _own_job(store, owner, job_id)
    if job.output != "mp4":
        raise NoVideoRequested("this job was submitted with output=wav; only /audio exists")
    key = _result(job, storage, job.video_key)
    return _send(storage, key, "video/mp4", f"{job.id}.mp4")


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    responses=error_responses(401, 404, 409, 503),
    summary="Cancel a queued or preparing job (a running job cannot be stopped: 409)",
    operation_id="cancelJob",
)
def cancel_job(job_id: str, owner: OwnerDep, store: StoreDep, storage: StorageDep) -> Job:
    """A queued job is canceled at once. A preparing job (a worker is reading its video) is canceled
    too; the worker notices before the model runs and removes the input itself. Idempotent."""
    job = _own_job(store, owner, job_id)
    outcome = lifecycle.cancel(store, job.id)
    if not outcome.canceled:
        current = outcome.job or job
        raise JobNotCancelable(f"the job is {current.status}; only queued or preparing jobs can be canceled")
    assert outcome.job is not None
    if outcome.delete_input:  # nobody holds it; a preparing job's worker deletes its own
        storage.delete(outcome.job.input_key)
    return Job.from_record(outcome.job)

"""Pydantic models of the HTTP API (what clients send and receive)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from diffv2s.schemas import (
    MAX_CFG_SCALE,
    MAX_GUIDANCE,
    MAX_NOISE_SCALE,
    MAX_SEED,
    MAX_STEPS,
    SAMPLERS,
    ResolvedSampling,
    SynthesisParams,
)
from jobs import JobRecord, JobStatus


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `queue_full`, `unsupported_video`.")
    message: str = Field(description="What went wrong, for humans.")


class ErrorResponse(BaseModel):
    error: ErrorBody


# HTTP descriptions of the sampling parameters. Names, types, defaults and bounds are declared once, in
# `diffv2s.schemas.SynthesisParams` (bounds checked by its `validate`); the models below derive from it.
_PARAM_DOCS = {
    "sampler": "Sampler (DDIM, DPM-Solver++ 2M, DDPM); default: the model's.",
    "steps": "Denoiser calls; default: the model's.",
    "seed": "Noise seed: same seed and video give the same audio.",
    "guidance": "Speaker-guidance scale; 0 = off.",
    "cfg_scale": "Classifier-free guidance scale (1 = off); default: the model's.",
    "noise_scale": "Scale of the sampler's starting noise (1 = N(0, I); lower samples nearer the most "
    "likely spectrogram); default: the model's.",
}
_BOUNDS: dict[str, dict[str, Any]] = {
    "sampler": {},
    "steps": {"ge": 1, "le": MAX_STEPS},
    "seed": {"ge": 0, "le": MAX_SEED},
    "guidance": {"ge": 0.0, "le": MAX_GUIDANCE},
    "cfg_scale": {"ge": 0.0, "le": MAX_CFG_SCALE},
    "noise_scale": {"ge": 0.0, "le": MAX_NOISE_SCALE},
}
_PARAM_TYPES = get_type_hints(SynthesisParams)
_PARAM_FIELDS = [f.name for f in dataclasses.fields(SynthesisParams)]
assert set(_PARAM_FIELDS) == set(_PARAM_DOCS) == set(_BOUNDS), "document every sampling parameter"


def _param_type(name: str) -> Any:
    if name == "sampler":  # a closed set in the schema, so clients (and fuzzers) see the choices
        return Literal[SAMPLERS] | None  # type: ignore[valid-type]
    return _PARAM_TYPES[name]


class SynthesisFormBase(BaseModel):
    """What every synthesis form has besides the sampling parameters (`SynthesisForm` adds those)."""

    model_config = ConfigDict(extra="forbid")

    output: Literal["wav", "mp4"] = Field(
        default="wav", description="`mp4` also returns the video with the new audio."
    )
    priority: Literal["low", "normal", "high"] = Field(
        default="normal",
        description="Queue priority: `high` jobs are taken before `normal`, `normal` before `low`. "
        "Lowered to the key's cap.",
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds from now: a job no worker started by then fails with `deadline_exceeded` "
        "and never runs.",
    )
    webhook: str | None = Field(
        default=None,
        max_length=2000,
        description="URL POSTed (signed per Standard Webhooks) on the events in `webhook_events`. Private, "
        "loopback and link-local targets are refused unless the server allows them.",
    )
    webhook_events: str | None = Field(
        default=None,
        max_length=100,
        description="Comma-separated: `start`, `progress`, `completed` (default `completed`).",
    )

    def params(self) -> SynthesisParams:
        return SynthesisParams.from_dict(self.model_dump(include=set(_PARAM_FIELDS))).validate()


_DEFAULTS = SynthesisParams()
_form_fields: dict[str, Any] = {
    name: (
        _param_type(name),
        Field(default=getattr(_DEFAULTS, name), description=_PARAM_DOCS[name], **_BOUNDS[name]),
    )
    for name in _PARAM_FIELDS
}
# The form fields of POST /v1/synthesize (besides the `video` file).
SynthesisForm = create_model("SynthesisForm", __base__=SynthesisFormBase, **_form_fields)

# A job's requested parameters as clients read them back (None = the checkpoint's default).
_job_param_fields: dict[str, Any] = {
    name: (_PARAM_TYPES[name], Field(default=getattr(_DEFAULTS, name))) for name in _PARAM_FIELDS
}
JobParams = create_model("JobParams", **_job_param_fields)

# The settings a job really ran with: every default resolved from the checkpoint.
_sampling_fields: dict[str, Any] = {name: (t, ...) for name, t in get_type_hints(ResolvedSampling).items()}
JobSampling = create_model("JobSampling", **_sampling_fields)


class Progress(BaseModel):
    step: int = Field(description="Sampling steps done.")
    total: int = Field(description="Sampling steps of the job.")


class JobUrls(BaseModel):
    job: str
    events: str | None = Field(default=None, description="Live status and progress (text/event-stream).")
    cancel: str | None = None
    audio: str | None = Field(default=None, description="WAV download, once succeeded.")
    video: str | None = Field(default=None, description="MP4 with the new soundtrack, when output=mp4.")


class WebhookState(BaseModel):
    events: list[str] = Field(description="The events the job sends to its webhook.")
    attempts: int = Field(default=0, description="POSTs made so far, retries included.")
    last_status: int | str | None = Field(
        default=None,
        description="HTTP status of the last attempt, or `timeout`, `connection_error`, `refused_target`.",
    )
    delivered: int = Field(default=0, description="Events the receiver accepted (2xx).")
    failed: int = Field(default=0, description="Events given up after the retry window.")


class Job(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="When the result will be removed.")
    output: Literal["wav", "mp4"]
    params: JobParams = Field(description="What the request asked for (null: the model's default).")  # type: ignore[valid-type]
    sampling: JobSampling | None = Field(  # type: ignore[valid-type]
        default=None,
        description="The settings the model really ran with, defaults resolved (once the job succeeded).",
    )
    progress: Progress | None = None
    timings: dict[str, float] | None = Field(default=None, description="Seconds per stage of the model.")
    batch_size: int | None = Field(
        default=None, description="How many jobs the worker ran together with this one."
    )
    video_seconds: float | None = None
    audio_seconds: float | None = None
    priority: Literal["low", "normal", "high"] = "normal"
    deadline_at: datetime | None = Field(
        default=None, description="A job not started by then fails with `deadline_exceeded`."
    )
    error: ErrorBody | None = None
    webhook: WebhookState | None = Field(default=None, description="Webhook delivery, when one was asked.")
    urls: JobUrls

    @classmethod
    def from_record(cls, job: JobRecord) -> Job:
        status = JobStatus.EXPIRED if job.is_expired() else job.status
        base = f"/v1/jobs/{job.id}"
        urls = JobUrls(job=base, events=f"{base}/events")
        if status in (JobStatus.QUEUED, JobStatus.PREPARING):
            urls.cancel = f"{base}/cancel"
        if status == JobStatus.SUCCEEDED:
            urls.audio = f"{base}/audio"
            if job.output == "mp4":
                urls.video = f"{base}/video"
        return cls(
            id=job.id,
            status=status,
            created_at=datetime.fromtimestamp(job.created_at, tz=UTC),
            started_at=_dt(job.started_at),
            finished_at=_dt(job.finished_at),
            expires_at=_dt(job.expires_at),
            output=job.output,  # type: ignore[arg-type]
            params=JobParams(**job.params),
            sampling=JobSampling(**job.sampling) if job.sampling else None,
            progress=Progress(**job.progress) if job.progress else None,
            timings=job.timings,
            batch_size=job.batch_size,
            video_seconds=job.video_seconds,
            audio_seconds=job.audio_seconds,
            priority=job.priority,  # type: ignore[arg-type]
            deadline_at=_dt(job.deadline_at),
            error=ErrorBody(**job.error) if job.error else None,
            webhook=_webhook_state(job),
            urls=urls,
        )


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str]
    workers: int


class NotReadyResponse(BaseModel):
    error: ErrorBody
    checks: dict[str, str]
    workers: int


def _dt(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


def _webhook_state(job: JobRecord) -> WebhookState | None:
    if not job.webhook_url:
        return None
    known = {k: v for k, v in (job.webhook or {}).items() if k in WebhookState.model_fields}
    return WebhookState(**(known | {"events": job.webhook_events or []}))

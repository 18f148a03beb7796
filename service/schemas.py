"""Pydantic models of the HTTP API (what clients send and receive)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from diffv2s.schemas import MAX_NOISE_SCALE, MAX_STEPS, SynthesisParams
from service.jobs import JobRecord, JobStatus


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `queue_full`, `unsupported_video`.")
    message: str = Field(description="What went wrong, for humans.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class SynthesisForm(BaseModel):
    """The form fields of POST /v1/synthesize (besides the `video` file)."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal["ddpm", "ddim", "dpmpp"] | None = Field(
        default=None, description="Sampler (DDIM, DPM-Solver++ 2M, DDPM); default: the model's."
    )
    steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Denoiser calls; default: the model's."
    )
    seed: int = Field(
        default=0, ge=0, lt=2**63, description="Noise seed: same seed and video give the same audio."
    )
    guidance: float = Field(default=0.0, ge=0.0, le=100.0, description="Speaker-guidance scale; 0 = off.")
    cfg_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=20.0,
        description="Classifier-free guidance scale (1 = off); default: the model's.",
    )
    noise_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_NOISE_SCALE,
        description="Scale of the sampler's starting noise (1 = N(0, I); lower samples nearer the most "
        "likely spectrogram); default: the model's.",
    )
    output: Literal["wav", "mp4"] = Field(
        default="wav", description="`mp4` also returns the video with the new audio."
    )

    def params(self) -> SynthesisParams:
        return SynthesisParams(
            sampler=self.sampler,
            steps=self.steps,
            seed=self.seed,
            guidance=self.guidance,
            cfg_scale=self.cfg_scale,
            noise_scale=self.noise_scale,
        ).validate()


class JobParams(BaseModel):
    sampler: str | None
    steps: int | None
    seed: int
    guidance: float
    cfg_scale: float | None
    noise_scale: float | None = None  # absent from jobs queued before the field existed


class Progress(BaseModel):
    step: int = Field(description="Sampling steps done.")
    total: int = Field(description="Sampling steps of the job.")


class JobUrls(BaseModel):
    job: str
    cancel: str | None = None
    audio: str | None = Field(default=None, description="WAV download, once succeeded.")
    video: str | None = Field(default=None, description="MP4 with the new soundtrack, when output=mp4.")


class Job(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="When the result will be removed.")
    output: Literal["wav", "mp4"]
    params: JobParams
    progress: Progress | None = None
    timings: dict[str, float] | None = Field(default=None, description="Seconds per stage of the model.")
    batch_size: int | None = Field(
        default=None, description="How many jobs the worker ran together with this one."
    )
    video_seconds: float | None = None
    audio_seconds: float | None = None
    error: ErrorBody | None = None
    urls: JobUrls

    @classmethod
    def from_record(cls, job: JobRecord) -> Job:
        status = JobStatus.EXPIRED if job.is_expired() else job.status
        base = f"/v1/jobs/{job.id}"
        urls = JobUrls(job=base)
        if status == JobStatus.QUEUED:
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
            progress=Progress(**job.progress) if job.progress else None,
            timings=job.timings,
            batch_size=job.batch_size,
            video_seconds=job.video_seconds,
            audio_seconds=job.audio_seconds,
            error=ErrorBody(**job.error) if job.error else None,
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

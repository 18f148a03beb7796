"""What the API sends and accepts, as plain dataclasses (no pydantic: the client needs only httpx).

Field names, types, nullability and enums mirror the service's OpenAPI schema (`Job`, `JobParams`,
`JobSampling`, `Progress`, `JobUrls`, `ErrorBody`, `JobList`, the `POST /v1/synthesize` form); a test in
the repository compares them, so a change on either side fails there first. Fields the server adds later
are ignored when decoding, so an older client keeps working against a newer server.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

Sampler = Literal["ddpm", "ddim", "dpmpp"]
Output = Literal["wav", "mp4"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"  # a worker holds the job and reads the video
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"  # succeeded once; the result was removed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})


@dataclass(frozen=True)
class ErrorInfo:
    """The `{"code", "message"}` of an error body, or of a failed job."""

    code: str
    message: str


@dataclass(frozen=True)
class Progress:
    step: int
    total: int

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class JobParams:
    """What the request asked for; None = the model's default."""

    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    guidance: float = 0.0
    cfg_scale: float | None = None
    noise_scale: float | None = None


@dataclass(frozen=True)
class JobSampling:
    """The settings the model really ran with, every default resolved (once a job succeeded)."""

    sampler: str
    steps: int
    seed: int
    guidance: float
    cfg_scale: float
    noise_scale: float


@dataclass(frozen=True)
class JobUrls:
    job: str
    cancel: str | None = None
    audio: str | None = None
    video: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    created_at: datetime
    output: Output
    params: JobParams
    urls: JobUrls
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    sampling: JobSampling | None = None
    progress: Progress | None = None
    timings: dict[str, float] | None = None
    batch_size: int | None = None
    video_seconds: float | None = None
    audio_seconds: float | None = None
    error: ErrorInfo | None = None
    # Not part of the body: the server's `Retry-After` on the response that carried this job (the
    # suggested delay before the next poll), when it sent one.
    poll_after_s: float | None = field(default=None, metadata={"wire": False}, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True)
class JobPage:
    """One page of `GET /v1/jobs`: newest first; pass `next_cursor` for the next page (None: the last)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class SynthesisOptions:
    """The form fields of `POST /v1/synthesize` besides the video; None = the model's default."""

    sampler: Sampler | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None
    cfg_scale: float | None = None
    noise_scale: float | None = None
    output: Output = "wav"

    def form(self) -> dict[str, str]:
        """The multipart fields (unset ones left out, so the server applies its defaults)."""
        return {f.name: str(v) for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}


def wire_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a model that travel in JSON (not the client-side ones)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("wire", True)]


T = TypeVar("T")


def decode(cls: type[T], data: Any) -> T:
    """A model from its JSON object; unknown keys are ignored, missing ones take the field's default."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    values = {}
    for f in wire_fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], f"{cls.__name__}.{f.name}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{cls.__name__}: {exc}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: null is not allowed")
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if value is None:
        raise ValueError(f"{where}: null is not allowed")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {args}")
        return value
    if origin is list:
        return [_convert(args[0], v, where) for v in value]
    if origin is dict:
        return {str(k): _convert(args[1], v, where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return decode(tp, value)  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"{where}: unknown value {value!r}") from None
    if tp is datetime:
        return datetime.fromisoformat(str(value))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")

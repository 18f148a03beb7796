"""Settings that the gateway and the workers must agree on, read once from the environment.

Both deployables extend `CommonSettings` (`service.settings.Settings`, `worker.settings.WorkerSettings`),
so they read the same `DIFFV2S_` variables the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypedDict

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class VideoLimitArgs(TypedDict):
    """The arguments of `diffv2s.video.decode.VideoLimits` that come from the settings."""

    max_pixels: int
    max_fps: float
    max_frames: int


class CommonSettings(BaseSettings):
    """Shared by gateway and workers."""

    model_config = SettingsConfigDict(env_prefix="DIFFV2S_", extra="ignore", frozen=True)

    environment: Literal["dev", "prod"] = "dev"
    # Celery broker: redis://... in production, sqla+sqlite:///... in the embedded mode.
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Job store: redis://host:port/db, or sqlite:///relative/path.sqlite3 (sqlite:////absolute/path).
    store_url: str = "redis://127.0.0.1:6379/1"
    # Namespace of every Redis key the job store writes (lets several deployments share one Redis).
    store_prefix: str = "diffv2s"
    storage_dir: Path = Path("var/storage")
    # Blob storage: empty = the directory storage_dir (shared by every process); s3://bucket/prefix = an
    # S3-compatible bucket (AWS S3, MinIO, Ceph; `s3` extra), and storage_dir is then this process's own
    # scratch space, shared with nobody. Endpoint, region and credentials default to boto3's standard
    # sources (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, IRSA).
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # MinIO and Ceph usually want path-style addressing (http://host:9000/bucket/key).
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Uploads and results go up in parts of this size (S3's floor is 5 MiB); one part is in memory.
    s3_part_bytes: int = Field(default=8 * 2**20, ge=5 * 2**20, le=512 * 2**20)
    # Downloads: 0 = the gateway streams the object; > 0 = a 307 to a presigned URL valid this long.
    storage_presign_ttl_s: int = Field(default=0, ge=0, le=7 * 24 * 3600)
    queue_name: str = "diffv2s"
    # Results (and their job records' urls) expire this long after the job finished.
    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    # Finished job records themselves are dropped this long after their results expired.
    record_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    # A worker is live while its heartbeat key exists; it refreshes it every heartbeat_interval_s.
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    # Redis redelivers an unacknowledged task after this long; task time limits must stay below it.
    visibility_timeout_s: int = Field(default=3600, ge=10)
    task_time_limit_s: int = Field(default=1800, ge=1)

    # Video limits (issue 17): the gateway checks them from the header before a job is queued and the
    # worker checks them again before it decodes, so both must read the same values. The defaults are
    # `diffv2s.video.decode.DEFAULT_LIMITS` (this package may not import the model library; a test keeps
    # them equal). `video_limit_kwargs` is what `VideoLimits(**...)` takes.
    max_video_pixels: int = Field(default=4096 * 2304, ge=1)  # 4K UHD and DCI 4K pass; 8K does not
    max_video_fps: float = Field(default=120.0, gt=0)
    max_video_frames: int = Field(default=7200, ge=1)

    @property
    def video_limit_kwargs(self) -> VideoLimitArgs:
        return {
            "max_pixels": self.max_video_pixels,
            "max_fps": self.max_video_fps,
            "max_frames": self.max_video_frames,
        }

    @model_validator(mode="after")
    def _check_common(self) -> CommonSettings:
        if self.storage_url and not (
            self.storage_url.startswith("s3://") and self.storage_url[5:].split("/", 1)[0]
        ):
            raise ValueError("DIFFV2S_STORAGE_URL must be empty (local storage) or s3://bucket[/prefix]")
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                "DIFFV2S_TASK_TIME_LIMIT_S must be below DIFFV2S_VISIBILITY_TIMEOUT_S, or Redis would "
                "hand a still-running task to a second worker"
            )
        if self.environment == "prod":
            if self.store_url.startswith("sqlite"):
                raise ValueError("the SQLite job store is for the embedded dev mode; use redis:// in prod")
            if self.broker_url.startswith("sqla+"):
                raise ValueError("the SQL broker is for the embedded dev mode; use redis:// in prod")
        return self

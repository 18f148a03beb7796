"""Settings of the gateway, read once from the environment (prefix `DIFFV2S_`).

`CommonSettings` holds what the gateway and the workers must agree on (broker, job store, storage,
retention); `Settings` adds what only the gateway needs. The worker extends `CommonSettings` in
`worker/settings.py`, so both deployables read the same variables the same way.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Keys shorter than this are refused outside dev: they can be guessed.
MIN_PROD_KEY_LENGTH = 24


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

    @model_validator(mode="after")
    def _check_common(self) -> CommonSettings:
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


class Settings(CommonSettings):
    """The gateway's settings."""

    # Comma-separated API keys, and/or a file with one key per line (# starts a comment).
    api_keys: str = ""
    api_keys_file: Path | None = None
    max_upload_mb: float = Field(default=100.0, gt=0)
    max_video_seconds: float = Field(default=60.0, gt=0)
    min_video_seconds: float = Field(default=0.5, ge=0)
    # Submissions are refused with 429 while this many jobs wait in the queue.
    queue_max_depth: int = Field(default=1000, ge=1)
    # Retry-After (s) sent with 429 / 503, and with 202 as the suggested first poll delay.
    retry_after_s: int = Field(default=5, ge=1)
    poll_after_s: int = Field(default=1, ge=1)
    docs_enabled: bool = True
    metrics_enabled: bool = True
    # Used by `python -m service` (uvicorn); ignored when the app is served another way.
    host: str = "127.0.0.1"
    port: int = 8000
    web_concurrency: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_gateway(self) -> Settings:
        keys = self.api_key_set
        if not keys:
            raise ValueError(
                "no API key configured: set DIFFV2S_API_KEYS (comma list) or DIFFV2S_API_KEYS_FILE"
            )
        if self.environment == "prod":
            short = [k for k in keys if len(k) < MIN_PROD_KEY_LENGTH]
            if short:
                raise ValueError(
                    f"{len(short)} API key(s) shorter than {MIN_PROD_KEY_LENGTH} characters in prod"
                )
        return self

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        keys = [k.strip() for k in self.api_keys.split(",")]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                keys.append(line.split("#", 1)[0].strip())
        return frozenset(k for k in keys if k)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

"""Settings of the gateway, read once from the environment (prefix `DIFFV2S_`).

`jobs.settings.CommonSettings` holds what the gateway and the workers must agree on (broker, job store,
storage, retention); `Settings` adds what only the gateway needs. Every variable the gateway reads is
a field here, including the unprefixed `PORT` and `PROMETHEUS_MULTIPROC_DIR` that platforms and
prometheus_client use.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from jobs.record import owner_id
from jobs.settings import CommonSettings

# Keys shorter than this are refused outside dev: they can be guessed.
MIN_PROD_KEY_LENGTH = 24


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
    # PORT (set by many platforms) wins over DIFFV2S_PORT.
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "DIFFV2S_PORT"))
    # prometheus_client reads this variable itself at import; `python -m service` sets and wipes it.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR")
    )
    web_concurrency: int = Field(default=1, ge=1)

    # --- Job options (issue 18): priority, deadline, blocking mode, live events. ---
    # The highest priority a key may ask for (a higher one is lowered to it), for every key, and per key:
    # a JSON object of API key (or `sha256:<hex digest of the key>`) -> cap, e.g. '{"batch-key": "low"}'.
    priority_max: Literal["low", "normal", "high"] = "high"
    priority_caps: dict[str, Literal["low", "normal", "high"]] = Field(default_factory=dict)
    # Longest `deadline_s` a submission may ask for.
    max_deadline_s: float = Field(default=24 * 3600, gt=0)
    # Longest `Prefer: wait=N` honoured (a larger N waits this long).
    max_prefer_wait_s: int = Field(default=60, ge=0, le=60)
    # GET /v1/jobs/{id}/events sends a keep-alive comment (and re-reads the job) after this much silence.
    events_keepalive_s: float = Field(default=15.0, gt=0)

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

    def priority_cap(self, owner: str) -> str:
        """The highest priority the key whose owner id is `owner` may use (`jobs.owner_id`)."""
        for key, cap in self.priority_caps.items():
            digest = key[len("sha256:") :] if key.startswith("sha256:") else owner_id(key)
            if digest[:32] == owner:
                return cap
        return self.priority_max

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

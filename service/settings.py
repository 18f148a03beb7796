"""Settings of the gateway, read once from the environment (prefix `DIFFV2S_`).

`jobs.settings.CommonSettings` holds what the gateway and the workers must agree on (broker, job store,
storage, retention); `Settings` adds what only the gateway needs. Every variable the gateway reads is
a field here, including the unprefixed `PORT` and `PROMETHEUS_MULTIPROC_DIR` that platforms and
prometheus_client use.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from diffv2s.video.decode import VideoLimits
from jobs.record import owner_id
from jobs.settings import CommonSettings
from jobs.webhooks import WebhookSettings

# Keys shorter than this are refused outside dev: they can be guessed.
MIN_PROD_KEY_LENGTH = 24
# A stored key: `sha256:` and the hex digest of the key (`python -m service.keys hash`).
HASH_PREFIX = "sha256:"


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
    # /docs and /openapi.json; unset: on in dev, off in prod (Swagger UI's files are served by the gateway).
    docs_enabled: bool | None = None
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

    # --- Limits and access control (issue 17). Each limit's status is in the README "Limits" table. ---
    # The video limits (MAX_VIDEO_PIXELS, MAX_VIDEO_FPS, MAX_VIDEO_FRAMES) are in CommonSettings: the
    # workers check the same values. Checked here from the header before any frame is decoded (422).
    # Per API key, `limits` notation ("120/minute", "10/second;300/hour"); "" turns the limit off (429).
    rate_limit_requests: str = "600/minute"
    rate_limit_submissions: str = "60/minute"
    # Queued + running jobs one key may have (429): one key cannot fill the queue for everyone.
    max_jobs_in_flight_per_key: int = Field(default=100, ge=1)
    # Concurrent uploads one key may stream into this gateway process (429).
    max_uploads_in_flight_per_key: int = Field(default=4, ge=1)
    # Comma-separated origins allowed by CORS; empty (the default) sends no CORS headers at all.
    cors_origins: str = ""
    # uvicorn's bounds (finding 4): connections, idle keep-alive, one header line/event.
    # Past it uvicorn itself answers a plain-text 503 without Retry-After and cuts uploads off, so it is a
    # last-resort bound well above the expected clients (the soak run's 200 clients met it at 200); the
    # app's own 429s (queue depth, per-key quotas) are what clients should see.
    limit_concurrency: int = Field(default=1000, ge=1)
    timeout_keep_alive_s: int = Field(default=5, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)

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
            short = [k for k in self._plain_keys if len(k) < MIN_PROD_KEY_LENGTH]
            if short:
                raise ValueError(
                    f"{len(short)} API key(s) shorter than {MIN_PROD_KEY_LENGTH} characters in prod"
                )
        return self

    @cached_property
    def _key_entries(self) -> frozenset[str]:
        keys = [k.strip() for k in self.api_keys.split(",")]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                keys.append(line.split("#", 1)[0].strip())
        return frozenset(k for k in keys if k)

    @property
    def _plain_keys(self) -> list[str]:
        return [k for k in self._key_entries if not k.startswith(HASH_PREFIX)]

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        """The accepted keys as SHA-256 hex digests (plain keys are hashed here and not kept)."""
        digests = set()
        for entry in self._key_entries:
            if entry.startswith(HASH_PREFIX):
                digest = entry[len(HASH_PREFIX) :].lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"a `{HASH_PREFIX}` key entry is not 64 hex digits")
                digests.add(digest)
            else:
                digests.add(hash_key(entry))
        return frozenset(digests)

    @property
    def docs_on(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else self.environment != "prod"

    @property
    def video_limits(self) -> VideoLimits:
        return VideoLimits(**self.video_limit_kwargs)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

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

    # --- Webhooks (issue 18); the workers read the same variables (`jobs.webhooks.WebhookSettings`). ---
    # The signing secret of every key without its own, and per key: a JSON object of API key (or
    # `sha256:<hex digest of the key>`) -> secret. A key with no secret cannot ask for webhooks.
    webhook_secret: str = ""
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    # Comma-separated networks a webhook target may resolve into although private, loopback or
    # link-local (e.g. "127.0.0.0/8,::1/128").
    webhook_allow_networks: str = ""

    @cached_property
    def webhooks(self) -> WebhookSettings:
        return WebhookSettings(
            broker_url=self.broker_url,
            webhook_secret=self.webhook_secret,
            webhook_secrets=self.webhook_secrets,
            webhook_allow_networks=self.webhook_allow_networks,
        )


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, as stored after `sha256:` in a key file."""
    return hashlib.sha256(key.encode()).hexdigest()

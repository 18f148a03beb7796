"""Per-key quotas: request rate and submission rate (the `limits` library, moving windows in Redis),
jobs in flight (from the job store) and concurrent uploads (per gateway process).

All answer 429 with a `Retry-After` that says when the caller may try again. With the embedded SQLite
job store the rate windows live in memory (one gateway process there).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from jobs import JobStore
from service.errors import TooManyRequests
from service.settings import Settings

log = logging.getLogger(__name__)


class KeyQuotas:
    def __init__(self, settings: Settings) -> None:
        url = settings.store_url if settings.store_url.startswith(("redis://", "rediss://")) else "memory://"
        self.storage = storage_from_string(url, key_prefix=f"{settings.store_prefix}:ratelimit")
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.requests: list[RateLimitItem] = (
            parse_many(settings.rate_limit_requests) if settings.rate_limit_requests else []
        )
        self.submissions: list[RateLimitItem] = (
            parse_many(settings.rate_limit_submissions) if settings.rate_limit_submissions else []
        )
        self.max_in_flight = settings.max_jobs_in_flight_per_key
        self.max_uploads = settings.max_uploads_in_flight_per_key
        self._uploads: Counter[str] = Counter()

    def _hit(self, items: list[RateLimitItem], owner: str, what: str) -> None:
        for item in items:
            try:
                allowed = self.limiter.hit(item, owner, what)
            except Exception as exc:  # the store down: fail open; the store's own errors answer 503
                log.warning("rate limiter unavailable: %s", type(exc).__name__)
                return
            if not allowed:
                stats = self.limiter.get_window_stats(item, owner, what)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyRequests(
                    f"too many {what} for this API key (limit {item}); retry after {wait} s",
                    code="rate_limited",
                    retry_after_s=wait,
                )

    def hit_request(self, owner: str) -> None:
        self._hit(self.requests, owner, "requests")

    def hit_submission(self, owner: str) -> None:
        self._hit(self.submissions, owner, "submissions")

    def check_in_flight(self, store: JobStore, owner: str, retry_after_s: int) -> None:
        """Raise 429 when the key already has `max_jobs_in_flight_per_key` queued or running jobs."""
        count = sum(1 for job in [*store.queued_jobs(), *store.held_jobs()] if job.owner == owner)
        if count >= self.max_in_flight:
            raise TooManyRequests(
                f"this API key has {count} jobs queued or running; the limit is {self.max_in_flight}",
                code="too_many_jobs_in_flight",
                retry_after_s=retry_after_s,
            )

    @contextmanager
    def upload_slot(self, owner: str, retry_after_s: int) -> Iterator[None]:
        if self._uploads[owner] >= self.max_uploads:
            raise TooManyRequests(
                f"this API key has {self.max_uploads} uploads in progress; the limit is {self.max_uploads}",
                code="too_many_uploads_in_flight",
                retry_after_s=retry_after_s,
            )
        self._uploads[owner] += 1
        try:
            yield
        finally:
            self._uploads[owner] -= 1
            if not self._uploads[owner]:
                del self._uploads[owner]

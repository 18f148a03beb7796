"""Fixtures every test folder shares: the real Redis the tests talk to (a missing one fails, never skips).

Each folder takes its own database index (jobs 11, worker and deploy 12, service 13, e2e 14 and 15), so
a folder's flushes never touch another's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture(scope="session")
def redis_base() -> str:
    """`redis://host:port` of the test Redis (DIFFV2S_TEST_REDIS, default the local one)."""
    base = os.environ.get("DIFFV2S_TEST_REDIS", "redis://127.0.0.1:6379")
    try:
        redis.Redis.from_url(base, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a real Redis at {base} (set DIFFV2S_TEST_REDIS): {exc}", pytrace=False)
    return base


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    """The requesting folder's own database (its conftest defines `redis_url`), flushed before and after."""
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()

"""Worker test fixtures: a REAL Redis job store on a dedicated DB index (a missing Redis fails)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.jobs.redis_store import RedisJobStore
from service.storage import LocalStorage

REDIS_DB = 12


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = f"{os.environ.get('DIFFV2S_TEST_REDIS', 'redis://127.0.0.1:6379')}/{REDIS_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a real Redis at {url} (set DIFFV2S_TEST_REDIS): {exc}", pytrace=False)
    return url


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisJobStore]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    s = RedisJobStore(redis_url, prefix="workertest")
    yield s
    s.close()
    r.flushdb()
    r.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")

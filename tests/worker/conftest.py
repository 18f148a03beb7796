"""Worker test fixtures: a REAL Redis job store on a dedicated DB index (a missing Redis fails)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage

REDIS_DB = 12


@pytest.fixture(scope="session")
def redis_url(redis_base: str) -> str:
    return f"{redis_base}/{REDIS_DB}"


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

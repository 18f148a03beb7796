"""Job-contract fixtures: a REAL Redis (dedicated DB index, flushed per test) and a SQLite file, so every
store test runs against both backends. A missing Redis fails these tests loudly: it is never a skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs import JobStore, open_store

REDIS_DB = 11


@pytest.fixture(scope="session")
def redis_url(redis_base: str) -> str:
    return f"{redis_base}/{REDIS_DB}"


@pytest.fixture(params=["redis", "sqlite"])
def job_store(
    request: pytest.FixtureRequest, tmp_path: Path, rdb: redis.Redis, redis_url: str
) -> Iterator[JobStore]:
    url = redis_url if request.param == "redis" else f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    store = open_store(url, prefix="storetest", record_ttl_s=3600)
    yield store
    store.close()

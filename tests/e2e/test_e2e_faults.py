"""End to end: storage not writable, broker down, Redis restarted (append-only file on), and a warm shutdown
whose batch outlives its grace.

The broker and the job store are two Redis processes of this test's own (`--appendonly yes`), so the
test can stop and restart them without touching the shared one; a real uvicorn gateway and real Celery
worker processes run against them.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

pytestmark = [pytest.mark.e2e]

STEPS = 2
LONG_STEPS = 40  # a batch far longer than the shutdown grace below
SHUTDOWN_GRACE_S = 1


@dataclass
class RedisServer:
    """A redis-server process with AOF on, restartable on the same port and data directory."""

    port: int
    dir: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes"]
            + ["--appendfsync", "always", "--save", "", "--dir", str(self.dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, (self.dir / "redis.log").read_text()
                time.sleep(0.1)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # Redis flushes its append-only file and exits
            self.popen.wait(30)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    from tests.e2e.conftest import free_port

    broker = RedisServer(free_port(), tmp_path_factory.mktemp("broker-redis"))
    store = RedisServer(free_port(), tmp_path_factory.mktemp("store-redis"))
    for s in (broker, store):
        s.start()
    yield broker, store
    for s in (broker, store):
        s.stop()


@pytest.fixture(scope="module")
def faulty(
    servers: tuple[RedisServer, RedisServer],
    checkpoint: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
    cluster_tools: Any,
) -> Iterator[Any]:
    broker, store = servers
    env = {
        "DIFFV2S_MAX_BATCH_SIZE": "2",
        "DIFFV2S_CONCURRENCY": "2",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "100",
        "DIFFV2S_RECOVERY_INTERVAL_S": "1",
        "DIFFV2S_LOST_MESSAGE_GRACE_S": "5",
        "DIFFV2S_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    }
    root = tmp_path_factory.mktemp("faults")
    with cluster_tools.launch(store.url, checkpoint, root, 1, env, broker_base=broker.url) as c:
        yield c


def client_of(c: Any) -> httpx.Client:
    return httpx.Client(base_url=c.url, headers={"Authorization": f"Bearer {c.key_a}"}, timeout=30)


def submit(client: httpx.Client, clip: Path, steps: int = STEPS) -> httpx.Response:
    files = {"video": (clip.name, clip.read_bytes(), "video/mp4")}
    return client.post("/v1/synthesize", files=files, data={"steps": str(steps)})


def finish(c: Any, cluster_tools: Any, ids: list[str], timeout: float = 180) -> list[Any]:
    def done() -> bool:
        try:
            return all(c.store.get(i).status in ("succeeded", "failed", "canceled") for i in ids)
        except Exception:  # the store may be restarting
            return False

    alive = [p for p in [c.gateway, *c.workers] if p.popen.poll() is None]
    cluster_tools.wait_until(done, timeout, f"jobs {ids} to finish", alive)
    return [c.store.get(i) for i in ids]


def finished_lines(c: Any) -> Counter[str]:
    logs = "\n".join(w.log.read_text(errors="replace") for w in c.workers)
    return Counter(re.findall(r"job ([0-9a-f-]{36}): succeeded", logs))


def test_storage_not_writable_fails_the_job_clearly_and_refuses_uploads_with_503(
    faulty: Any, cluster_tools: Any, clips: list[Path]
) -> None:
    c = faulty
    results = c.storage / "results"
    shutil.rmtree(results, ignore_errors=True)
    results.write_bytes(b"")  # a file where the results directory goes: no writes there, even as root
    try:
        with client_of(c) as client:
            r = submit(client, clips[0])
            assert r.status_code == 202, r.text
            (job,) = finish(c, cluster_tools, [r.json()["id"]])
            assert job.status == "failed", job
            assert job.error["code"] == "storage_unavailable"
            assert "could not be written to storage" in job.error["message"]
    finally:
        results.unlink()

    tmp = c.storage / "tmp"
    tmp.rename(c.storage / "tmp.moved")
    tmp.write_bytes(b"")  # uploads are written under tmp/ first
    try:
        with client_of(c) as client:
            r = submit(client, clips[0])
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert int(r.headers["Retry-After"]) > 0
            assert str(c.storage) not in r.text
    finally:
        tmp.unlink()
        (c.storage / "tmp.moved").rename(tmp)

    with client_of(c) as client:
        r = submit(client, clips[1])
        assert r.status_code == 202
        (job,) = finish(c, cluster_tools, [r.json()["id"]])
        assert job.status == "succeeded", c.logs()


def test_broker_down_answers_503_with_retry_after_and_accepted_jobs_finish_once_it_is_back(
    faulty: Any, servers: tuple[RedisServer, RedisServer], cluster_tools: Any, clips: list[Path]
) -> None:
    c = faulty
    broker, _ = servers
    with client_of(c) as client:
        accepted = [submit(client, clips[i]).json()["id"] for i in range(3)]
        broker.stop()
        try:
            for _ in range(3):
                r = submit(client, clips[0])
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "broker_unavailable"
                assert int(r.headers["Retry-After"]) > 0
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
        finally:
            broker.start()
        later = submit(client, clips[1])
        assert later.status_code == 202, later.text
        ids = [*accepted, later.json()["id"]]
        jobs = finish(c, cluster_tools, ids)
    assert [j.status for j in jobs] == ["succeeded"] * len(ids), c.logs()
    counts = finished_lines(c)
    assert all(counts[i] == 1 for i in ids), counts
    # The refused submissions left no job behind.
    assert c.store.queued_count() == 0


def test_redis_restarted_with_aof_keeps_queued_and_running_jobs_and_they_finish(
    faulty: Any, servers: tuple[RedisServer, RedisServer], cluster_tools: Any, clips: list[Path]
) -> None:
    c = faulty
    with client_of(c) as client:
        ids = [submit(client, clips[i % len(clips)], steps=10).json()["id"] for i in range(4)]

    def some_running() -> bool:
        return any(c.store.get(i).status == "running" for i in ids)

    cluster_tools.wait_until(some_running, 120, "a running job", [c.gateway, *c.workers])
    before = {i: c.store.get(i).status for i in ids}
    assert "running" in before.values() and "queued" in before.values(), before
    for s in servers:
        s.stop()
    for s in servers:
        s.start()
    jobs = finish(c, cluster_tools, ids)
    assert [j.status for j in jobs] == ["succeeded"] * len(ids), c.logs()
    counts = finished_lines(c)
    assert all(counts[i] == 1 for i in ids), counts


def test_a_warm_shutdown_hands_back_a_batch_that_outlives_its_grace(
    faulty: Any, cluster_tools: Any, clips: list[Path]
) -> None:
    """Runs last: it stops the cluster's worker and starts another."""
    c = faulty
    (worker,) = c.workers
    with client_of(c) as client:
        job_id = submit(client, clips[3], steps=LONG_STEPS).json()["id"]
    cluster_tools.wait_until(
        lambda: c.store.get(job_id).status == "running", 120, "the long job to run", [c.gateway, worker]
    )
    worker.popen.send_signal(signal.SIGTERM)
    # Far below the batch's own length and below compose's 75 s kill deadline.
    assert worker.popen.wait(30) == 0, worker.tail()
    back = c.store.get(job_id)
    assert back.status == "queued" and back.worker is None and back.attempts == 0, back
    assert f"job {job_id} handed back to the queue (worker shutting down)" in worker.log.read_text()

    c.spawn_worker()
    (job,) = finish(c, cluster_tools, [job_id], timeout=300)
    assert job.status == "succeeded", c.logs()
    assert finished_lines(c)[job_id] == 1

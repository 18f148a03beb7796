"""Live events, the blocking mode, priority and deadline at the gateway, in-process over a real Redis.

No worker runs here: the test moves the job through `jobs.lifecycle` itself, exactly as a worker would;
tests/e2e/test_e2e_job_options.py runs the same features with real worker processes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from jobs import JobStatus, lifecycle
from jobs.redis_store import RedisJobStore
from service.settings import Settings

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., httpx.AsyncClient]


async def submit(client: httpx.AsyncClient, path: Path, headers: dict[str, str] | None = None, **form: str):  # type: ignore[no-untyped-def]
    files = {"video": (path.name, path.read_bytes(), "video/mp4")}
    return await client.post("/v1/synthesize", files=files, data=form, headers=headers or {})


def parse_sse(text: str) -> list[dict]:
    """Events of an SSE body as {id, event, data} (comments and the retry field left out)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append({"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])})
    return out


def run_job(store: RedisJobStore, job_id: str, steps: int = 2) -> None:
    """What a worker does with a job, through the same named transitions."""
    claimed = lifecycle.claim(store, job_id, "test-worker")
    assert claimed is not None
    assert lifecycle.start(store, job_id, claimed.lease) is not None
    for step in range(1, steps + 1):
        store.set_progress([job_id], step, steps)
    done = lifecycle.succeed(store, job_id, 60, {"audio_key": f"results/{job_id}.wav"}, claimed.lease)
    assert done is not None


async def test_events_replay_a_jobs_life_resume_after_any_event_and_are_private(
    client: httpx.AsyncClient,
    make_client: MakeClient,
    settings: Settings,
    store: RedisJobStore,
    media: dict[str, Path],
    keys: tuple[str, str],
) -> None:
    job_id = (await submit(client, media["video"])).json()["id"]
    run_job(store, job_id)

    resp = await client.get(f"/v1/jobs/{job_id}/events")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(resp.text)
    seen = [e["data"].get("status") or f"{e['data']['step']}/{e['data']['total']}" for e in events]
    assert seen == ["queued", "preparing", "running", "1/2", "2/2", "succeeded"]
    assert [e["event"] for e in events] == ["status"] * 3 + ["progress"] * 2 + ["status"]
    assert events[3]["data"]["stage"] == "sampling"
    assert events[-1]["data"]["job"]["urls"]["audio"] == f"/v1/jobs/{job_id}/audio"

    for cut in range(len(events)):
        again = await client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[cut]["id"]})
        assert [e["id"] for e in parse_sse(again.text)] == [e["id"] for e in events[cut + 1 :]]

    bad = await client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "nonsense"})
    assert bad.status_code == 422
    async with make_client(settings, keys[1]) as other:
        resp = await other.get(f"/v1/jobs/{job_id}/events")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "job_not_found"


async def test_prefer_wait_answers_the_finished_job_or_202_after_the_wait(
    client: httpx.AsyncClient, store: RedisJobStore, media: dict[str, Path]
) -> None:
    # Nobody runs the job: after the wait, the usual 202.
    resp = await submit(client, media["video"], headers={"Prefer": "wait=1"})
    assert resp.status_code == 202, resp.text
    assert resp.headers["Preference-Applied"] == "wait=1"
    assert resp.json()["status"] == "queued"

    # A "worker" runs the next job while the request waits: 200 with the finished job.
    def worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queued = [j for j in store.queued_jobs() if j.params.get("seed") == 3]
            if queued:
                time.sleep(0.2)
                run_job(store, queued[0].id)
                return
            time.sleep(0.05)

    t = threading.Thread(target=worker)
    t.start()
    try:
        resp = await submit(client, media["video"], headers={"Prefer": "respond-async, wait=30"}, seed="3")
    finally:
        await asyncio.to_thread(t.join)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Preference-Applied"] == "wait=30"
    assert resp.json()["status"] == "succeeded" and resp.json()["urls"]["audio"]

    # N above the limit is lowered to it; a malformed N is refused.
    resp = await submit(client, media["video"], headers={"Prefer": "wait=x"}, seed="4")
    assert resp.status_code == 422


async def test_priority_is_capped_per_key_and_routed_to_its_queue(
    make_client: MakeClient,
    settings: Settings,
    media: dict[str, Path],
    keys: tuple[str, str],
    rdb: redis.Redis,
) -> None:
    capped = settings.model_copy(update={"priority_caps": {keys[1]: "low"}})
    async with make_client(capped, keys[0]) as a, make_client(capped, keys[1]) as b:
        high = (await submit(a, media["video"], priority="high")).json()
        lowered = (await submit(b, media["video"], priority="high")).json()
        plain = (await submit(a, media["video"])).json()
    assert (high["priority"], lowered["priority"], plain["priority"]) == ("high", "low", "normal")
    q = settings.queue_name
    waiting = {
        name: [json.loads(m)["headers"]["id"] for m in rdb.lrange(name, 0, -1)]
        for name in (f"{q}.high", q, f"{q}.low")
    }
    assert waiting == {f"{q}.high": [high["id"]], q: [plain["id"]], f"{q}.low": [lowered["id"]]}


async def test_deadline_is_recorded_and_bounded(
    client: httpx.AsyncClient, store: RedisJobStore, settings: Settings, media: dict[str, Path]
) -> None:
    before = time.time()
    job = (await submit(client, media["video"], deadline_s="30")).json()
    record = store.get(job["id"])
    assert record is not None and record.deadline_at is not None
    assert before + 30 <= record.deadline_at <= time.time() + 30
    assert job["deadline_at"]
    resp = await submit(client, media["video"], deadline_s=str(settings.max_deadline_s + 1))
    assert resp.status_code == 422 and "deadline_s" in resp.json()["error"]["message"]
    assert (await submit(client, media["video"], deadline_s="0")).status_code == 422
    assert store.get(job["id"]).status == JobStatus.QUEUED  # type: ignore[union-attr]

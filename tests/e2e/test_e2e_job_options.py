"""End to end: live events through a second gateway process, the blocking mode, priority and deadline,
with a real Redis, two real uvicorn gateways and one real Celery worker (real small model, CPU).

The worker has one task thread, batches of one, and holds every claimed job in `preparing` for
`HOLD_S` (the test hook DIFFV2S_TEST_HOLD_PREPARED_S): every job then takes longer than `HOLD_S`, which
makes "the job cannot finish within 1 s" and "the worker is busy while this deadline passes" certain
rather than likely.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e]

HOLD_S = 3.0


@pytest.fixture(scope="module")
def one_worker(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    env = {
        "DIFFV2S_TEST_HOLD_PREPARED_S": str(HOLD_S),
        "DIFFV2S_MAX_BATCH_SIZE": "1",
        "DIFFV2S_CONCURRENCY": "1",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "0",
    }
    root = tmp_path_factory.mktemp("options")
    with cluster_tools.launch(redis_base, checkpoint, root, 1, env) as c:
        yield c


@pytest.fixture(scope="module")
def second_gateway(
    one_worker: Any, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[str]:
    """Another uvicorn process with the first one's environment: the same Redis, no shared memory."""
    with cluster_tools.extra_gateway(one_worker, tmp_path_factory.mktemp("gw2"), "gateway2") as url:
        yield url


def _client(c: Any, url: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url or c.url, headers={"Authorization": f"Bearer {c.key_a}"}, timeout=90)


def _submit(
    client: httpx.Client, clip: Path, headers: dict[str, str] | None = None, **form: str
) -> httpx.Response:
    files = {"video": (clip.name, clip.read_bytes(), "video/mp4")}
    return client.post("/v1/synthesize", files=files, data={"steps": "2", **form}, headers=headers or {})


def _events(
    client: httpx.Client, job_id: str, last_id: str | None = None, stop_after: int | None = None
) -> list[dict[str, Any]]:
    """Read the SSE stream (until it ends, or after `stop_after` events, then disconnect)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    out: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in resp.iter_lines():
            if line == "":
                if "event" in fields:
                    out.append(
                        {"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])}
                    )
                    if stop_after is not None and len(out) >= stop_after:
                        return out
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return out


def _label(e: dict[str, Any]) -> str:
    d = e["data"]
    return d["status"] if e["event"] == "status" else f"{d['stage']} {d['step']}/{d['total']}"


def test_a_client_of_another_gateway_process_sees_every_event_and_resumes_without_loss_or_repeats(
    one_worker: Any, second_gateway: str, clips: list[Path]
) -> None:
    with _client(one_worker) as a, _client(one_worker, second_gateway) as b:
        job_id = _submit(a, clips[0]).json()["id"]
        first = _events(b, job_id, stop_after=2)  # queued, preparing; then the client goes away
        rest = _events(b, job_id, last_id=first[-1]["id"])
        whole = _events(b, job_id)  # after the end: the whole log again
    seen = first + rest
    assert [e["id"] for e in seen] == [e["id"] for e in whole]
    assert len({e["id"] for e in seen}) == len(seen)
    labels = [_label(e) for e in seen]
    assert labels[:3] == ["queued", "preparing", "running"]
    assert labels[-1] == "succeeded" and "sampling 2/2" in labels
    assert seen[-1]["data"]["job"]["status"] == "succeeded"


def test_prefer_wait_answers_the_finished_job_or_202(one_worker: Any, clips: list[Path]) -> None:
    with _client(one_worker) as client:
        done = _submit(client, clips[0], headers={"Prefer": "wait=60"}, seed="7")
        assert done.status_code == 200, done.text
        assert done.headers["Preference-Applied"] == "wait=60"
        assert done.json()["status"] == "succeeded"
        assert client.get(done.json()["urls"]["audio"]).status_code == 200

        # Every job is held HOLD_S in preparing: it cannot end within 1 s.
        late = _submit(client, clips[0], headers={"Prefer": "wait=1"}, seed="8")
        assert late.status_code == 202, late.text
        assert late.headers["Preference-Applied"] == "wait=1"
        assert late.json()["status"] in ("queued", "preparing")
        _events(client, late.json()["id"])  # until it ends


def test_a_high_job_submitted_after_a_low_backlog_starts_next_and_an_overdue_job_never_runs(
    one_worker: Any, cluster_tools: Any, clips: list[Path]
) -> None:
    c = one_worker
    with _client(c) as client:
        blocker = _submit(client, clips[0], seed="10").json()["id"]
        cluster_tools.wait_until(
            lambda: c.store.get(blocker).status != "queued", 60, "the blocker to be claimed", c.workers
        )
        lows = [_submit(client, clips[0], priority="low", seed=str(11 + i)).json()["id"] for i in range(2)]
        overdue = _submit(client, clips[0], priority="high", deadline_s="1", seed="20").json()["id"]
        high = _submit(client, clips[0], priority="high", seed="21").json()["id"]
        for job_id in [blocker, *lows, overdue, high]:
            _events(client, job_id)
        jobs = {j: c.store.get(j) for j in [blocker, *lows, overdue, high]}

    assert all(jobs[j].status == "succeeded" for j in [blocker, *lows, high]), {
        j: v.error for j, v in jobs.items()
    }
    assert jobs[high].claimed_at < min(jobs[j].claimed_at for j in lows)
    assert jobs[overdue].status == "failed"
    assert jobs[overdue].error["code"] == "deadline_exceeded"
    assert jobs[overdue].claimed_at is None and jobs[overdue].started_at is None
    with _client(c) as client:
        assert [_label(e) for e in _events(client, overdue)] == ["queued", "failed"]

"""End to end: a worker killed with SIGKILL mid-batch, and a job whose message never reached the broker.

Two real Celery workers, a real uvicorn gateway, real Redis. The visibility timeout stays at its default
(an hour): everything below is recovered by the workers' watchdog (`jobs.recovery`), not by Redis.
"""

from __future__ import annotations

import re
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs import JobRecord, JobStatus, owner_id
from jobs.storage import input_key

pytestmark = [pytest.mark.e2e]

STEPS = 10  # long enough that a batch is still running when the test kills its worker
N_JOBS = 6
# A recovered job must finish well inside this; the Redis visibility timeout (3600 s) would be the
# alternative.
RECOVERY_DEADLINE_S = 240


@pytest.fixture(scope="module")
def pair(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    env = {
        "DIFFV2S_MAX_BATCH_SIZE": "3",
        "DIFFV2S_CONCURRENCY": "3",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "300",
        "DIFFV2S_RECOVERY_INTERVAL_S": "1",
        "DIFFV2S_LOST_MESSAGE_GRACE_S": "5",
    }
    with cluster_tools.launch(redis_base, checkpoint, tmp_path_factory.mktemp("recovery"), 2, env) as c:
        yield c


def finished_lines(logs: str) -> Counter[str]:
    """How many times each job ran to completion: the worker logs one line per finished task."""
    return Counter(re.findall(r"job ([0-9a-f-]{36}): succeeded", logs))


def worker_logs(c: Any) -> str:
    return "\n".join(w.log.read_text(errors="replace") for w in c.workers)


def test_a_worker_killed_mid_batch_loses_no_job_and_runs_none_twice(
    pair: Any, cluster_tools: Any, clips: list[Path]
) -> None:
    c = pair
    host = socket.gethostname()
    ids_of = {f"{host}:{w.popen.pid}": w for w in c.workers}
    with httpx.Client(base_url=c.url, headers={"Authorization": f"Bearer {c.key_a}"}, timeout=60) as client:
        ids = []
        for i in range(N_JOBS):
            clip = clips[i % len(clips)]
            r = client.post(
                "/v1/synthesize",
                files={"video": (clip.name, clip.read_bytes(), "video/mp4")},
                data={"seed": str(i), "steps": str(STEPS)},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])

        # Kill the first worker seen running a batch, while it runs it.
        deadline = time.monotonic() + 120
        victim_id = None
        while victim_id is None:
            assert time.monotonic() < deadline, c.logs()
            running = [j for j in map(c.store.get, ids) if j and j.status == JobStatus.RUNNING]
            victim_id = running[0].worker if running else None
            time.sleep(0.02)
        victim = ids_of[victim_id]
        victim.popen.send_signal(signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), time.time()
        victim.popen.wait(10)
        held = [j for j in map(c.store.get, ids) if j and j.worker == victim_id and j.status != "succeeded"]
        assert any(j.status == JobStatus.RUNNING for j in held), held

        def all_done() -> bool:
            return all(j is not None and j.status in ("succeeded", "failed") for j in map(c.store.get, ids))

        survivor = [w for w in c.workers if w is not victim]
        cluster_tools.wait_until(all_done, RECOVERY_DEADLINE_S, "every job to finish", [c.gateway, *survivor])
        recovery_s = time.monotonic() - killed_at
        print(
            f"\nSIGKILL recovery: {len(held)} jobs of the killed worker finished {recovery_s:.1f} s after the kill"
        )

    records: list[JobRecord] = [j for j in map(c.store.get, ids) if j is not None]
    assert [j.status for j in records] == ["succeeded"] * N_JOBS, c.logs()
    survivor_id = next(i for i in ids_of if i != victim_id)
    requeued_after = []
    for job in held:
        again = c.store.get(job.id)
        assert again is not None and again.worker == survivor_id and again.attempts == 1, again
        assert again.queued_at is not None
        requeued_after.append(again.queued_at - killed_wall)
    print(f"SIGKILL recovery: requeued {min(requeued_after):.1f}-{max(requeued_after):.1f} s after the kill")
    # Each job ran to completion exactly once, across both workers' logs (the victim's included).
    assert finished_lines(worker_logs(c)) == Counter({i: 1 for i in ids}), worker_logs(c)
    survivor_log = survivor[0].log.read_text(errors="replace")
    assert sum(
        f"job {j.id} taken back from worker {victim_id} (worker_lost)" in survivor_log for j in held
    ) == len(held)


def test_a_job_queued_without_a_message_is_republished_and_runs(
    pair: Any, cluster_tools: Any, clips: list[Path]
) -> None:
    """What a gateway that crashed between writing the record and publishing leaves behind: the upload in
    storage, a queued record, no message in the broker. (Runs after the kill: one worker is left.)"""
    c = pair
    job_id = str(uuid.uuid4())
    key = input_key(job_id, ".mp4")
    (c.storage / key).parent.mkdir(parents=True, exist_ok=True)
    (c.storage / key).write_bytes(clips[0].read_bytes())
    record = JobRecord(
        id=job_id,
        owner=owner_id(c.key_a),
        status=JobStatus.QUEUED,
        created_at=time.time(),
        params={
            "sampler": None,
            "steps": 2,
            "seed": 0,
            "guidance": 0.0,
            "cfg_scale": None,
            "noise_scale": None,
        },
        output="wav",
        input_key=key,
    )
    c.store.create(record, 3600)
    alive = [w for w in c.workers if w.popen.poll() is None]
    cluster_tools.wait_until(
        lambda: c.store.get(job_id).status == "succeeded", 120, "the orphaned job to run", [c.gateway, *alive]
    )
    assert f"job {job_id} was queued with no message in the broker; republished" in worker_logs(c)
    metrics = httpx.get(f"http://127.0.0.1:{alive[0].extra['metrics_port']}/metrics").text
    assert 'diffv2s_jobs_recovered_total{reason="message_lost"} 1.0' in metrics, metrics
    assert finished_lines(worker_logs(c))[job_id] == 1

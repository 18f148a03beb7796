"""Issue 17: hostile inputs the gateway accepts, answered by a real worker (real Redis, real uvicorn, one
real Celery worker with the real small model on CPU): each fails its job with a clear typed error, or
succeeds where it should (an odd-sized video with output=mp4 is padded), and after each one the worker
is alive and a good job still succeeds. The worker runs with lower video limits than the gateway
(tests/fixtures/hostile.py WORKER_ENV): a clip within the gateway's limits but over the worker's fails
with the typed code (resolution_too_high, too_many_frames), the worker applying its own settings."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.fixtures.hostile import WORKER_ENV, good_clip, worker_cases

pytestmark = [pytest.mark.e2e]

STEPS = 2


@pytest.fixture(scope="module")
def hostile_cluster(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    # The worker's own video limits (WORKER_ENV) are below the gateway's defaults.
    env = {"DIFFV2S_MAX_BATCH_SIZE": "2", "DIFFV2S_CONCURRENCY": "2", "DIFFV2S_MAX_QUEUE_DELAY_MS": "0"}
    env |= WORKER_ENV
    with cluster_tools.launch(redis_base, checkpoint, tmp_path_factory.mktemp("hostile"), 1, env) as c:
        yield c


def run_job(
    client: httpx.Client, name: str, data: bytes, timeout: float = 180, **form: Any
) -> dict[str, Any]:
    r = client.post(
        "/v1/synthesize",
        files={"video": (name, data, "application/octet-stream")},
        data={"steps": str(STEPS), **{k: str(v) for k, v in form.items()}},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            # The request id the gateway answered the submission with (kept on the job for the worker).
            return job | {"submitted_request_id": r.headers["X-Request-ID"]}
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} ({name}) not finished after {timeout} s")


def log_lines(log: Path, text: str, timeout: float = 10.0) -> list[str]:
    """The lines of `log` containing `text` (the worker writes its line just after the job's record)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_hostile_inputs_fail_their_job_alone_and_the_worker_goes_on(
    hostile_cluster: Any, tmp_path: Path
) -> None:
    good = good_clip(tmp_path)
    cases = worker_cases(tmp_path)
    worker = hostile_cluster.workers[0]
    headers = {"Authorization": f"Bearer {hostile_cluster.key_a}"}
    with httpx.Client(base_url=hostile_cluster.url, headers=headers, timeout=60) as client:
        for case in cases:
            name, code = case.name, case.code
            job = run_job(client, name, case.data, **case.form)
            assert job["status"] == case.status, (name, job.get("error"), hostile_cluster.logs())
            if code is None:
                assert job.get("error") is None, (name, job)
            else:
                assert job["error"]["code"] == code, (name, job)
                assert job["error"]["message"], (name, job)
                # The worker's log line about the failure names the job and the request that submitted it.
                failed = log_lines(worker.log, f"job {job['id']} failed")
                ids = f"job={job['id']} request_id={job['submitted_request_id']} "
                assert failed and all(ids in line for line in failed), worker.tail()
            if name == "odd.avi":
                video = client.get(f"/v1/jobs/{job['id']}/video")
                assert video.status_code == 200, video.text
                with av.open(io.BytesIO(video.content)) as c:
                    s = c.streams.video[0]
                    assert (s.codec_context.name, s.width, s.height) == ("h264", 176, 144)
            assert worker.popen.poll() is None, f"the worker died after {name}\n{worker.tail()}"
            after = run_job(client, "good.mp4", good, seed=len(name))
            assert after["status"] == "succeeded", (name, after.get("error"), hostile_cluster.logs())
    assert "Traceback" not in worker.tail(400), worker.tail(400)

"""Issue 17: the worker reads the gateway's video limits (the same DIFFV2S_MAX_VIDEO_* variables) and checks
them before it decodes, failing the job with the typed code; every log line about a job names the job and
the X-Request-ID that submitted it. Real Redis job store; no model is loaded (the check comes first)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from diffv2s.video.decode import VideoLimits
from jobs import JobRecord, JobStatus
from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage, input_key
from service.settings import Settings
from tests.fixtures.hostile import write_rgb
from worker import logs
from worker.model import ModelRuntime
from worker.settings import WorkerSettings
from worker.tasks import run_job


def test_gateway_and_worker_read_the_same_video_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFV2S_MAX_VIDEO_PIXELS", "12345")
    monkeypatch.setenv("DIFFV2S_MAX_VIDEO_FPS", "30")
    monkeypatch.setenv("DIFFV2S_MAX_VIDEO_FRAMES", "99")
    expected = VideoLimits(max_pixels=12345, max_fps=30.0, max_frames=99)
    assert WorkerSettings().video_limits == expected
    assert Settings(api_keys="k").video_limits == expected


def submitted(store: RedisJobStore, storage: LocalStorage, video: bytes, request_id: str) -> JobRecord:
    job_id = str(uuid.uuid4())
    record = JobRecord(
        id=job_id,
        owner="o",
        status=JobStatus.QUEUED,
        created_at=time.time(),
        params={"steps": 2},
        output="wav",
        input_key=input_key(job_id, ".upload"),
        request_id=request_id,
    )
    with storage.writer(record.input_key) as f:
        f.write(video)
    store.create(record, 60)
    return record


@pytest.mark.parametrize(
    ("limits", "shape", "code", "says"),
    [
        ({"max_video_pixels": 64 * 64 - 1}, (25, 64, 64), "resolution_too_high", "the limit is"),
        ({"max_video_frames": 20}, (25, 64, 64), "too_many_frames", "the limit is 20 frames"),
    ],
    ids=["pixels", "frames"],
)
def test_a_video_over_the_workers_limit_fails_its_job_with_the_typed_code(
    limits: dict[str, int],
    shape: tuple[int, int, int],
    code: str,
    says: str,
    store: RedisJobStore,
    storage: LocalStorage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A gateway app created in this test process (other modules) installs a record factory of its own that
    # sets `request_id` from the gateway's context; a worker process never imports the gateway, so here
    # too the worker's factory goes on top.
    logs.install()
    # No model: the limits are checked before anything is decoded or reaches the model.
    runtime = ModelRuntime(WorkerSettings(**limits), store, storage)  # type: ignore[arg-type]
    video = write_rgb(tmp_path / "v.mp4", np.zeros((*shape, 3), np.uint8)).read_bytes()
    job = submitted(store, storage, video, request_id="req-limits-0001")
    with caplog.at_level(logging.INFO, logger="worker.tasks"):
        assert run_job(runtime, job.id) == "failed"
    record = store.get(job.id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error is not None and record.error["code"] == code, record.error
    assert says in record.error["message"]
    assert not storage.exists(job.input_key)  # the input is deleted with the failure

    # Every line about the job, in the task thread, names it and the request that submitted it.
    mine = [r for r in caplog.records if r.name == "worker.tasks"]
    assert any(f"job {job.id} failed: {code}" in r.getMessage() for r in mine)
    ids = [(r.getMessage(), getattr(r, "job_id", None), getattr(r, "request_id", None)) for r in mine]
    assert all(ids_of[1:] == (job.id, "req-limits-0001") for ids_of in ids), ids
    line = logging.Formatter(logs.LOG_FORMAT).format(mine[-1])
    assert f"job={job.id} request_id=req-limits-0001 " in line


def test_lines_about_no_job_say_so_and_threads_do_not_share_a_job() -> None:
    logs.install()
    seen: dict[str, tuple[str | None, str | None]] = {}

    def record(name: str) -> None:
        r = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, name, (), None)
        seen[name] = (getattr(r, "job_id", None), getattr(r, "request_id", None))

    with logs.job_context("job-a"):
        logs.bind_request_id("req-a")
        record("inside")
        other = threading.Thread(target=record, args=("other thread",))
        other.start()
        other.join()
    record("after")
    assert seen == {"inside": ("job-a", "req-a"), "other thread": ("-", "-"), "after": ("-", "-")}

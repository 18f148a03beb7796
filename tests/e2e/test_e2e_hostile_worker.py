"""Issue 17: hostile inputs the gateway accepts, answered by a real worker (real Redis, real uvicorn, one
real Celery worker with the real small model on CPU): each fails its job with a clear typed error, or
succeeds where it should (an odd-sized video with output=mp4 is padded), and after each one the worker
is alive and a good job still succeeds."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.e2e]

STEPS = 2


def write_frames(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> Path:
    """RGB frames [n, h, w, 3] -> a video (container from the suffix)."""
    n, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def carphone_frames(n: int) -> np.ndarray:
    from tests.fixtures.videos import carphone_path, read_rgb_frames

    return np.stack(read_rgb_frames(carphone_path())[:n])


@pytest.fixture(scope="module")
def hostile_cluster(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    env = {"DIFFV2S_MAX_BATCH_SIZE": "2", "DIFFV2S_CONCURRENCY": "2", "DIFFV2S_MAX_QUEUE_DELAY_MS": "0"}
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
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} ({name}) not finished after {timeout} s")


def test_hostile_inputs_fail_their_job_alone_and_the_worker_goes_on(
    hostile_cluster: Any, tmp_path: Path
) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (25, 64, 64, 3), dtype=np.uint8)
    good = write_frames(tmp_path / "good.mp4", carphone_frames(38)).read_bytes()
    # (name, bytes, form fields, expected status, expected error code or None)
    cases = [
        ("noise.mp4", write_frames(tmp_path / "n.mp4", noise).read_bytes(), {}, "failed", "no_face_found"),
        (
            "tiny.mp4",
            write_frames(tmp_path / "t.mp4", np.zeros((25, 2, 2, 3), np.uint8)).read_bytes(),
            {},
            "failed",
            "no_face_found",
        ),
        (
            "noface.webm",
            write_frames(tmp_path / "v.webm", noise, codec="libvpx-vp9").read_bytes(),
            {},
            "failed",
            "no_face_found",
        ),
        (
            "odd.avi",
            write_frames(tmp_path / "o.avi", carphone_frames(38)[:, :143, :175], codec="mpeg4").read_bytes(),
            {"output": "mp4"},
            "succeeded",
            None,
        ),
    ]
    worker = hostile_cluster.workers[0]
    headers = {"Authorization": f"Bearer {hostile_cluster.key_a}"}
    with httpx.Client(base_url=hostile_cluster.url, headers=headers, timeout=60) as client:
        for name, data, form, status, code in cases:
            job = run_job(client, name, data, **form)
            assert job["status"] == status, (name, job.get("error"), hostile_cluster.logs())
            if code is None:
                assert job.get("error") is None, (name, job)
            else:
                assert job["error"]["code"] == code, (name, job)
                assert job["error"]["message"], (name, job)
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

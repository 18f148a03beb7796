"""End to end: a real uvicorn gateway, two real Celery workers (real small model, CPU), real Redis."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

STEPS = 4
N_JOBS = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def video_seconds(path: Path) -> float:
    """Duration from the stream header (independent of the code under test)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is not None and s.time_base is not None
        return float(s.duration * s.time_base)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(
    client: httpx.AsyncClient, clip: Path, headers: dict[str, str] | None = None, **form: Any
) -> httpx.Response:
    files = {"video": (clip.name, clip.read_bytes(), "video/mp4")}
    return await client.post(
        "/v1/synthesize", files=files, data={k: str(v) for k, v in form.items()}, headers=headers
    )


async def poll(client: httpx.AsyncClient, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wav_seconds(data: bytes) -> tuple[float, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getnframes() / w.getframerate(), pcm


async def test_twenty_concurrent_jobs_are_batched_and_all_succeed(
    cluster: Any, clips: list[Path], noise_clip: Path
) -> None:
    async with httpx.AsyncClient(base_url=cluster.url, headers=auth(cluster.key_a), timeout=60) as client:
        plan = [(clips[i % len(clips)], "mp4" if i == 0 else "wav") for i in range(N_JOBS)]
        responses = await asyncio.gather(
            *(submit(client, clip, seed=i, steps=STEPS, output=out) for i, (clip, out) in enumerate(plan))
        )
        assert [r.status_code for r in responses] == [202] * N_JOBS, [
            r.text for r in responses if r.status_code != 202
        ]
        ids = [r.json()["id"] for r in responses]

        # Submitted behind the 20 (the workers hold at most 8), so it is still queued: cancel it.
        late = (await submit(client, clips[0], seed=99, steps=STEPS)).json()["id"]
        canceled = await client.post(f"/v1/jobs/{late}/cancel")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        # A real video without a face: fails alone, and the worker keeps serving.
        bad = (await submit(client, noise_clip, steps=STEPS)).json()["id"]

        jobs = await asyncio.gather(*(poll(client, job_id, 400) for job_id in ids))
        failures = [(j["id"], j["error"]) for j in jobs if j["status"] != "succeeded"]
        assert not failures, f"{failures}\n{cluster.logs()}"
        bad_job = await poll(client, bad, 120)
        assert bad_job["status"] == "failed"
        assert bad_job["error"]["code"] == "no_face_found"
        assert (await client.get(f"/v1/jobs/{late}")).json()["status"] == "canceled"
        no_result = await client.get(f"/v1/jobs/{late}/audio")
        assert no_result.status_code == 409 and no_result.json()["error"]["code"] == "no_result"

        for (clip, out), job in zip(plan, jobs, strict=True):
            expected = video_seconds(clip)
            audio = await client.get(job["urls"]["audio"])
            assert audio.status_code == 200
            seconds, pcm = wav_seconds(audio.content)
            assert seconds == pytest.approx(expected, rel=0.01), (clip.name, seconds, expected)
            assert np.abs(pcm).max() > 0
            assert job["progress"] == {"step": STEPS, "total": STEPS}
            assert {"preprocess", "encoder", "speaker", "sampling", "vocoder", "total"} <= set(job["timings"])
            assert job["started_at"] <= job["finished_at"]
            if out == "mp4":
                video = await client.get(job["urls"]["video"])
                assert video.status_code == 200
                with av.open(io.BytesIO(video.content)) as c:
                    assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
                    a = c.streams.audio[0]
                    assert float(a.duration * a.time_base) == pytest.approx(expected, abs=0.1)

    # Batches > 1, read from the workers' own records: the job records they wrote and their heartbeats.
    records = [cluster.store.get(job_id) for job_id in ids]
    assert all(r is not None for r in records)
    assert max(r.batch_size or 0 for r in records if r) > 1
    assert len({r.worker for r in records if r}) == 2, "both workers took jobs"
    # Heartbeats are periodic (every 0.5 s here): the last batch can finish after the latest beat was written,
    # so wait a few intervals for a beat that has seen every job.
    # The faceless clip fails in its task thread's preprocessing, before the batcher: only model items count.
    deadline = time.monotonic() + 10
    beats = cluster.store.live_workers()
    while sum(b["items"] for b in beats) < N_JOBS and time.monotonic() < deadline:
        time.sleep(0.25)
        beats = cluster.store.live_workers()
    assert len(beats) == 2
    assert max(b["max_batch"] for b in beats) > 1
    assert sum(b["items"] for b in beats) >= N_JOBS
    assert sum(int(size) * n for b in beats for size, n in b["batch_sizes"].items()) == sum(
        b["items"] for b in beats
    )

    # Each worker's own metrics endpoint agrees with the job records.
    def scrape() -> list[str]:
        return [
            httpx.get(f"http://127.0.0.1:{w.extra['metrics_port']}/metrics").text for w in cluster.workers
        ]

    deadline = time.monotonic() + 30
    while sum(metric(t, "diffv2s_jobs_finished_total", outcome="canceled") for t in scrape()) < 1:
        assert time.monotonic() < deadline, "the canceled job's message was never consumed"
        time.sleep(0.5)
    texts = scrape()
    assert sum(metric(t, "diffv2s_jobs_finished_total", outcome="succeeded") for t in texts) == N_JOBS
    assert sum(metric(t, "diffv2s_jobs_finished_total", outcome="failed") for t in texts) == 1
    # Only items that reached the model count; the faceless clip failed in its task thread's preprocessing.
    assert sum(metric(t, "diffv2s_batch_size_sum") for t in texts) == N_JOBS
    assert all(metric(t, "diffv2s_model_loaded") == 1 and metric(t, "diffv2s_worker_up") == 1 for t in texts)
    assert sum(metric(t, "diffv2s_stage_seconds_count", stage="sampling") for t in texts) >= 2
    gateway = httpx.get(f"{cluster.url}/metrics").text
    assert metric(gateway, "diffv2s_jobs_submitted_total") >= N_JOBS + 2
    assert metric(gateway, "diffv2s_queue_depth") == 0


async def test_api_contract_over_real_http(cluster: Any, clips: list[Path]) -> None:
    clip = clips[0]
    async with (
        httpx.AsyncClient(base_url=cluster.url, headers=auth(cluster.key_a), timeout=60) as a,
        httpx.AsyncClient(base_url=cluster.url, headers=auth(cluster.key_b), timeout=60) as b,
    ):
        # Idempotent replay, and a conflicting reuse of the key.
        key = {"Idempotency-Key": f"e2e-{uuid.uuid4()}"}
        first = await submit(a, clip, headers=key, seed=5, steps=STEPS)
        again = await submit(a, clip, headers=key, seed=5, steps=STEPS)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        conflict = await submit(a, clip, headers=key, seed=6, steps=STEPS)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "idempotency_key_reused"

        job_id = first.json()["id"]
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/audio"):
            other = await b.get(path)
            assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
        missing = await a.get(f"/v1/jobs/{uuid.uuid4()}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"

        bad = await submit(a, clip, steps=0)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"
        bad = await submit(a, clip, sampler="euler")
        assert bad.status_code == 422

        png = io.BytesIO()
        with av.open(png, mode="w", format="image2pipe") as out:
            s = out.add_stream("png", rate=1)
            s.width = s.height = 16
            s.pix_fmt = "rgb24"
            for packet in s.encode(
                av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            ):
                out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
        r = await a.post("/v1/synthesize", files={"video": ("face.png", png.getvalue(), "image/png")})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_video"

        too_big = clip.read_bytes() + b"\0" * int(cluster.max_upload_mb * 2**20)
        r = await a.post("/v1/synthesize", files={"video": ("big.mp4", too_big, "video/mp4")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"

        async def chunked():  # type: ignore[no-untyped-def]
            yield b'--bnd\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n'
            for _ in range(int(cluster.max_upload_mb * 16) + 8):
                yield b"\0" * 65536
            yield b"\r\n--bnd--\r\n"

        r = await a.post(
            "/v1/synthesize", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=bnd"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"

        done = await poll(a, job_id, 300)
        assert done["status"] == "succeeded", done
        ready = await a.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == 2


def test_warm_shutdown_finishes_the_batch_in_flight_and_hands_back_the_rest(
    cluster: Any, clips: list[Path]
) -> None:
    """Runs last: it stops one of the two workers."""
    victim, survivor = cluster.workers
    victim_id = f"{socket.gethostname()}:{victim.popen.pid}"
    survivor_id = f"{socket.gethostname()}:{survivor.popen.pid}"
    with httpx.Client(base_url=cluster.url, headers=auth(cluster.key_a), timeout=60) as client:
        ids = []
        for i in range(12):
            files = {"video": (clips[i % 4].name, clips[i % 4].read_bytes(), "video/mp4")}
            r = client.post("/v1/synthesize", files=files, data={"seed": str(i), "steps": str(STEPS)})
            assert r.status_code == 202
            ids.append(r.json()["id"])

        deadline = time.monotonic() + 120
        running: list[str] = []
        while not running:
            assert time.monotonic() < deadline, "the victim never started a job"
            records = [cluster.store.get(i) for i in ids]
            running = [r.id for r in records if r and r.status == "running" and r.worker == victim_id]
            time.sleep(0.05)
        victim.popen.send_signal(signal.SIGTERM)
        assert victim.popen.wait(180) == 0

        finished = [cluster.store.get(i) for i in running]
        assert all(r is not None and r.status == "succeeded" and r.worker == victim_id for r in finished)
        assert victim_id not in [w["id"] for w in cluster.store.live_workers()]

        jobs = [asyncio.run(_poll_sync(cluster.url, cluster.key_a, i)) for i in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), cluster.logs()
        workers = {cluster.store.get(i).worker for i in ids}
        assert survivor_id in workers


async def _poll_sync(url: str, key: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers=auth(key), timeout=60) as client:
        return await poll(client, job_id, 300)

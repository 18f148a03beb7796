"""The client library and the `diffv2s-client` command against the REAL service (embedded mode: a real
uvicorn gateway and a real Celery worker running the shipped model; see conftest). `wait` follows the
job's event stream when the running service offers one and polls otherwise; the async test polls on
purpose, so both paths run."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import threading
import uuid
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import av
import httpx
import pytest
from diffv2s_client import AsyncClient, Client, JobStatus, RetryEvent, RetryPolicy, WaitTimeout, errors

if TYPE_CHECKING:
    from conftest import Service

pytestmark = pytest.mark.e2e

STEPS = 2
TIMEOUT_S = 240.0
# The console script `pip install -e client` registered beside this interpreter.
COMMAND = str(Path(sys.executable).parent / "diffv2s-client")


def offers_events(service: Service) -> bool:
    """Whether the running gateway has GET /v1/jobs/{id}/events (its own OpenAPI document says)."""
    paths = httpx.get(f"{service.url}/openapi.json", timeout=10).raise_for_status().json()["paths"]
    return "/v1/jobs/{job_id}/events" in paths


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def audio_tracks(path: Path) -> int:
    with av.open(str(path)) as c:
        return len(c.streams.audio)


def test_synthesize_submit_wait_download_with_progress(service: Service, clip: Path, tmp_path: Path) -> None:
    updates = []
    with Client(service.url, service.key) as client:
        job = client.synthesize(
            clip,
            tmp_path / "speech.wav",
            video_path=tmp_path / "dubbed.mp4",
            steps=STEPS,
            seed=3,
            timeout_s=TIMEOUT_S,
            on_update=updates.append,
        )
        assert client.events_supported is offers_events(service)  # followed the stream, or polled
        assert job.status is JobStatus.SUCCEEDED and job.output == "mp4"
        assert job.params.steps == STEPS and job.params.seed == 3
        assert job.sampling is not None and job.sampling.steps == STEPS
        assert job.progress is not None and job.progress.step == job.progress.total == STEPS
        seen = [u.status for u in updates]
        assert seen[0] is JobStatus.QUEUED and seen[-1] is JobStatus.SUCCEEDED
        assert JobStatus.PREPARING in seen  # the worker holds each job a few seconds (conftest)
        speech = (tmp_path / "speech.wav").read_bytes()
        assert wav_seconds(speech) == pytest.approx(job.audio_seconds, rel=0.01)
        assert client.read_result(job) == speech
        assert audio_tracks(tmp_path / "dubbed.mp4") == 1
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
        page = client.list_jobs(status="succeeded", limit=5)
        assert job.id in [j.id for j in page.jobs]
        with pytest.raises(errors.JobNotCancelable):
            client.cancel(job)


def test_typed_errors_from_the_real_service(service: Service, clip: Path, tmp_path: Path) -> None:
    with Client(service.url, service.key) as client:
        with pytest.raises(errors.JobNotFound) as not_found:
            client.get(str(uuid.uuid4()))
        assert not_found.value.status_code == 404 and not_found.value.code == "job_not_found"
        with pytest.raises(errors.InvalidParameter, match="steps"):
            client.submit(clip, steps=0)
        with pytest.raises(errors.UnsupportedMedia) as not_video:
            client.submit(b"not a video at all", filename="notes.txt")
        assert not_video.value.code in ("unsupported_video", "empty_file")
    with Client(service.url, "wrong-key") as client, pytest.raises(errors.Unauthorized):
        client.list_jobs()


def test_wait_timeout_cancel_and_no_result(service: Service, clip: Path, tmp_path: Path) -> None:
    with Client(service.url, service.key) as client:
        job = client.submit(clip, steps=STEPS)
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(job, timeout_s=0.5)  # the worker holds it longer than that
        assert not timed_out.value.job.terminal
        canceled = client.cancel(job)
        assert canceled.status is JobStatus.CANCELED
        assert client.wait(job, timeout_s=TIMEOUT_S).status is JobStatus.CANCELED
        with pytest.raises(errors.NoResult):
            client.download(job, tmp_path / "nothing.wav")
        assert not (tmp_path / "nothing.wav").exists()
        assert client.cancel(job).status is JobStatus.CANCELED  # cancel is idempotent


def _wait_for_status(client: Client, job_id: str, status: JobStatus) -> None:
    for _ in range(600):
        if client.get(job_id).status is status:
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"job {job_id} never reached {status}")


def test_a_full_queue_429_is_retried_after_retry_after_then_succeeds(service: Service, clip: Path) -> None:
    """The gateway admits one queued job and the worker takes one at a time: with job A held by the
    worker and B waiting, C is refused with 429 + Retry-After; the client waits and retries, and once B
    is canceled (on the first retry) C is accepted and runs to the end."""
    retries: list[RetryEvent] = []
    with Client(service.url, service.key) as client:
        a = client.submit(clip, steps=STEPS)
        _wait_for_status(client, a.id, JobStatus.PREPARING)
        b = client.submit(clip, steps=STEPS)

        def on_retry(event: RetryEvent) -> None:
            retries.append(event)
            if len(retries) == 1:
                client.cancel(b)

        with Client(service.url, service.key, on_retry=on_retry, retry=RetryPolicy(max_retries=5)) as other:
            c = other.submit(clip, steps=STEPS)
            assert other.wait(c, timeout_s=TIMEOUT_S).status is JobStatus.SUCCEEDED
        assert client.wait(a, timeout_s=TIMEOUT_S).status is JobStatus.SUCCEEDED
    assert len(retries) >= 1
    first = retries[0]
    assert isinstance(first.error, errors.QueueFull) and first.error.retry_after_s == 1.0
    assert first.delay_s == 1.0 and (first.method, first.path) == ("POST", "/v1/synthesize")


def test_bounded_retries_raise_the_last_error(service: Service, clip: Path) -> None:
    retries: list[RetryEvent] = []
    with Client(service.url, service.key) as client:
        a = client.submit(clip, steps=STEPS)
        _wait_for_status(client, a.id, JobStatus.PREPARING)
        b = client.submit(clip, steps=STEPS)
        with Client(
            service.url, service.key, retry=RetryPolicy(max_retries=1), on_retry=retries.append
        ) as other:
            with pytest.raises(errors.QueueFull):
                other.submit(clip, steps=STEPS)
        assert len(retries) == 1
        client.cancel(b)
        client.cancel(a)


def test_async_client(service: Service, clip: Path, tmp_path: Path) -> None:
    async def run() -> None:
        async with AsyncClient(service.url, service.key) as client:
            job = await client.submit(clip.read_bytes(), filename=clip.name, steps=STEPS)
            assert job.status is JobStatus.QUEUED and job.poll_after_s == 1.0  # the 202's Retry-After
            job = await client.wait(job, timeout_s=TIMEOUT_S, events=False)  # polling, whatever the server
            assert job.status is JobStatus.SUCCEEDED and client.events_supported is None
            path = await client.download(job, tmp_path / "async.wav")
            assert wav_seconds(path.read_bytes()) > 1.0
            with pytest.raises(errors.NoVideoRequested):
                await client.download(job, tmp_path / "async.mp4", kind="video")

    asyncio.run(run())


# --- the command ---


def cli(service: Service, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DIFFV2S_API_KEY"}
    if key is not None:
        env["DIFFV2S_API_KEY"] = key
    return subprocess.run([COMMAND, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_command_synthesize_writes_wav_and_mp4(service: Service, clip: Path, tmp_path: Path) -> None:
    wav, mp4 = tmp_path / "out.wav", tmp_path / "out.mp4"
    done = cli(
        service,
        "synthesize", str(clip), "-o", str(wav), "--mp4", str(mp4), "--url", service.url, "--steps", "2",
        key=service.key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "succeeded: wrote" in done.stdout and str(wav) in done.stdout
    assert "step" in done.stderr  # the progress bar
    assert wav_seconds(wav.read_bytes()) > 1.0 and audio_tracks(mp4) == 1
    job_id = done.stdout.split()[1]
    status = cli(service, "status", job_id, "--url", service.url, "--key", service.key)
    assert status.returncode == 0 and '"status": "succeeded"' in status.stdout


def test_command_exit_codes_and_messages(
    service: Service, clip: Path, faceless_clip: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "x.wav")
    url = ["--url", service.url]
    cases = [
        # (arguments, key, exit code, message)
        (["synthesize", str(clip), "-o", out, *url], None, 2, "error [no_api_key]"),
        (["synthesize", str(tmp_path / "missing.mp4"), "-o", out, *url], service.key, 2, "error [no_such_file]"),
        (["synthesize", str(clip), "-o", out, *url, "--key", "wrong-key"], None, 3, "error [unauthorized]"),
        (["synthesize", str(clip), "-o", out, *url, "--steps", "0"], service.key, 4, "error [invalid_parameter]"),
        (["synthesize", str(faceless_clip), "-o", out, *url, "--quiet"], service.key, 5, "error [no_face_found]"),
        (["synthesize", str(clip), "-o", out, "--url", "http://127.0.0.1:9", "--retries", "0"], service.key, 7,
         "error [unreachable]"),
        (["status", str(uuid.uuid4()), *url], service.key, 4, "error [job_not_found]"),
    ]  # fmt: skip
    for args, key, code, message in cases:
        done = cli(service, *args, key=key)
        lines = re.split(r"[\r\n]+", done.stderr)
        assert done.returncode == code and any(line.startswith(message) for line in lines), (
            args,
            done.stderr,
        )
        assert "Traceback" not in done.stderr
    assert not Path(out).exists()

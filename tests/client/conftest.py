"""Fixtures of the client tests: the REAL service in its embedded mode (`python -m service.embedded`, as
`make run` starts it: a real uvicorn gateway and a real Celery worker with the shipped small model, on
SQLite and a local folder, so these tests share no Redis database with the others), and short clips.

The worker runs one job at a time and holds each claimed job `HOLD_S` seconds before reading it (its
test hook), and the gateway admits one queued job: so a test can build a full queue (429) or cancel a
job in flight deterministically.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.fixtures.videos import carphone_path, read_rgb_frames, write_video

REPO = Path(__file__).resolve().parents[2]
API_KEY = "client-test-key-0123456789"
HOLD_S = 3.0


@dataclass(frozen=True)
class Service:
    url: str
    key: str
    log: Path

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("embedded")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env |= {
        "PORT": str(port),
        "DIFFV2S_VAR_DIR": str(root / "var"),
        "DIFFV2S_API_KEYS": API_KEY,
        "DIFFV2S_QUEUE_MAX_DEPTH": "1",
        "DIFFV2S_RETRY_AFTER_S": "1",
        "DIFFV2S_MAX_BATCH_SIZE": "1",
        "DIFFV2S_CONCURRENCY": "1",
        "DIFFV2S_TEST_HOLD_PREPARED_S": str(HOLD_S),
        "DIFFV2S_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = root / "embedded.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.embedded"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    svc = Service(f"http://127.0.0.1:{port}", API_KEY, log)
    try:
        deadline = time.monotonic() + 240
        while True:  # /readyz answers 200 once the worker's heartbeat shows (model loaded, warmed up)
            assert proc.poll() is None, f"the embedded service exited\n{svc.tail()}"
            assert time.monotonic() < deadline, f"the embedded service is not ready\n{svc.tail()}"
            try:
                if httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield svc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1.5 s of the real carphone clip (45 frames at 29.97 fps)."""
    frames = read_rgb_frames(carphone_path())[10:55]
    return write_video(tmp_path_factory.mktemp("clips") / "carphone_45f.mp4", frames, fps=30000 / 1001)


@pytest.fixture(scope="session")
def faceless_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid video with no face in it: the job fails with `no_face_found`."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (144, 176, 3), dtype=np.uint8) for _ in range(30)]
    return write_video(tmp_path_factory.mktemp("noise") / "noise.mp4", frames, fps=25.0)

"""Issue 17: every log line of a request carries its X-Request-ID, against a real gateway process started as
`python -m service` (its uvicorn log config: the access log and the gateway's own loggers) on real Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
KEY = "log-test-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (the broker the gateway cannot reach)."""
    return free_port()


@pytest.fixture
def gateway(redis_url: str, rdb: redis.Redis, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "DIFFV2S_API_KEYS": KEY,
        "DIFFV2S_STORE_URL": redis_url,
        # No broker: /readyz logs a warning during its request (the line under test).
        "DIFFV2S_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "DIFFV2S_STORAGE_DIR": str(tmp_path / "storage"),
        "DIFFV2S_HOST": "127.0.0.1",
        "DIFFV2S_PORT": str(port),
    }
    log = tmp_path / "gateway.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start\n" + log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def lines_with(log: Path, text: str, timeout: float = 10.0) -> list[str]:
    """The log lines containing `text` (waits a little: the process writes them after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_every_log_line_of_a_request_carries_the_request_id_the_response_carried(
    gateway: tuple[str, Path],
) -> None:
    url, log = gateway
    with httpx.Client(base_url=url, timeout=30) as client:
        # The client's own id (well-formed) is kept and logged.
        mine = "client-chosen-id-0001"
        r = client.get("/healthz", headers={"X-Request-ID": mine})
        assert r.headers["X-Request-ID"] == mine
        access = lines_with(log, f"request_id={mine} ")
        assert len(access) == 1, log.read_text()
        assert '"GET /healthz HTTP/1.1" 200' in access[0]

        # No id sent: the one the gateway made is in the response and in every line of the request, the
        # gateway's own warning (readiness: broker down) as well as the access log line.
        r = client.get("/readyz")
        assert r.status_code == 503
        rid = r.headers["X-Request-ID"]
        assert len(rid) >= 8
        mine_lines = lines_with(log, f"request_id={rid} ")
        assert any("readiness: broker check failed" in line for line in mine_lines), log.read_text()
        assert any('"GET /readyz HTTP/1.1" 503' in line for line in mine_lines), log.read_text()

        # An error answered before any route ran (no API key) has its line too.
        r = client.post("/v1/synthesize", files={"video": ("x.mp4", b"x" * 10, "video/mp4")})
        assert r.status_code == 401
        assert any(
            '"POST /v1/synthesize HTTP/1.1" 401' in line
            for line in lines_with(log, f"request_id={r.headers['X-Request-ID']} ")
        ), log.read_text()

    text = log.read_text(errors="replace")
    # A line about no request says so (startup), and no line lacks the field.
    assert any(
        "request_id=- " in line and "Application startup complete" in line for line in text.splitlines()
    )
    access_lines = [line for line in text.splitlines() if "uvicorn.access" in line]
    assert len(access_lines) >= 4  # the health checks of the fixture and the three requests above
    assert all("request_id=-" not in line for line in access_lines), access_lines

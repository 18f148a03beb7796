"""The one-command embedded mode, started exactly as `make run` starts it: submit -> poll -> download."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, video_seconds

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


class Output:
    """Collects a process's output on a thread, so the test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text)
            if m:
                return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.text[-4000:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_mode_submit_poll_download_and_ctrl_c(
    tmp_path: Path, clips: list[Path], checkpoint: Path | None
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env |= {"PORT": str(port), "DIFFV2S_VAR_DIR": str(tmp_path / "var"), "DIFFV2S_TORCH_THREADS": "1"}
    env |= {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if checkpoint is not None:
        env["DIFFV2S_CHECKPOINT"] = str(checkpoint)
    # The Makefile's `run` target: $(BIN)/python -m service.embedded, from the repository root.
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.embedded"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        url = f"http://127.0.0.1:{port}"
        assert out.wait_for(re.escape(f"URL      {url}"), 60)
        key = out.wait_for(r"API key  (\S+)", 10).group(1)
        assert (tmp_path / "var" / "dev-api-key").read_text().strip() == key
        assert f'curl -s -H "Authorization: Bearer {key}" -F video=@' in out.text
        worker_pid = int(out.wait_for(r"Worker ready \(pid (\d+)\)", 180).group(1))

        headers = {"Authorization": f"Bearer {key}"}
        clip = clips[1]
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            resp = client.post(
                "/v1/synthesize", files={"video": (clip.name, clip.read_bytes())}, data={"steps": "4"}
            )
            assert resp.status_code == 202, resp.text
            location = resp.headers["location"]
            deadline = time.monotonic() + 180
            job = resp.json()
            while job["status"] not in ("succeeded", "failed", "canceled"):
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
                job = client.get(location).json()
            assert job["status"] == "succeeded", job
            audio = client.get(job["urls"]["audio"])
            assert audio.status_code == 200
            with wave.open(io.BytesIO(audio.content)) as w:
                assert w.getnframes() / w.getframerate() == pytest.approx(video_seconds(clip), rel=0.01)
            assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401

        # Everything lives under the var dir: SQLite broker and job store, local storage.
        var = tmp_path / "var"
        assert {"broker.sqlite3", "jobs.sqlite3", "storage", "dev-api-key"} <= {p.name for p in var.iterdir()}
        assert (var / "storage" / "results" / f"{job['id']}.wav").is_file()

        # Ctrl-C: the gateway and its worker stop together.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        deadline = time.monotonic() + 30
        while alive(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived the embedded process"
            time.sleep(0.2)
        out.thread.join(10)
        assert "Stopped gateway and worker." in out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

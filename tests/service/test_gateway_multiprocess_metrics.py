"""`python -m service` with several uvicorn processes: /metrics sums what every process counted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "diffv2s_http_requests_total" and s.labels.get("route") == "/healthz":
                return s.value
    return 0.0


def test_metrics_are_merged_across_uvicorn_processes(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_99999.db").write_bytes(b"left over from a previous run")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env |= {
        "DIFFV2S_API_KEYS": "k",
        "DIFFV2S_STORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "DIFFV2S_STORAGE_DIR": str(tmp_path / "storage"),
        "DIFFV2S_WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "PORT": str(port),
    }
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.2)
        assert not (prom / "counter_99999.db").exists()  # wiped at start

        start = healthz_count(httpx.get(f"{base}/metrics").text)
        n = 60
        for _ in range(n):  # a new connection each time, so both processes accept some
            assert httpx.get(f"{base}/healthz").status_code == 200
        total = healthz_count(httpx.get(f"{base}/metrics").text)
        assert total - start == n
        writers = {p.name.split("_")[-1] for p in prom.glob("counter_*.db")}
        assert len(writers) >= 2, f"only {writers} wrote samples"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()

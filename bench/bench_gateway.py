"""Gateway throughput: GET /v1/jobs/{id} requests/s on one core, and upload MB/s for a 50 MB file.

Run: `.venv/bin/python -m bench.bench_gateway` (prints a table, writes bench/results/gateway.json).
Needs Redis (DIFFV2S_BENCH_REDIS, default redis://127.0.0.1:6379; DB 10 and 11 are flushed). The
gateway is one uvicorn process pinned to CPU 0; the load generator is a minimal keep-alive HTTP/1.1
client pinned to the other CPUs, so it does not compete with the gateway for its core.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BROKER_DB, STORE_DB = 10, 11
KEY = "bench-key-0123456789abcdef"


def redis_base() -> str:
    base = os.environ.get("DIFFV2S_BENCH_REDIS", "redis://127.0.0.1:6379")
    redis.Redis.from_url(f"{base}/{BROKER_DB}", socket_connect_timeout=2).ping()
    return base


def flush(base: str) -> None:
    for db in (BROKER_DB, STORE_DB):
        redis.Redis.from_url(f"{base}/{db}").flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(base: str, storage: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env |= {
        "DIFFV2S_BROKER_URL": f"{base}/{BROKER_DB}",
        "DIFFV2S_STORE_URL": f"{base}/{STORE_DB}",
        "DIFFV2S_STORAGE_DIR": str(storage),
        "DIFFV2S_API_KEYS": KEY,
        "DIFFV2S_MAX_UPLOAD_MB": "64",
        "DIFFV2S_QUEUE_MAX_DEPTH": "100000",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(args: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None) -> Process:
    fh = open(log, "wb")  # noqa: SIM115 - lives as long as the process

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return Process(
        subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=pin), log
    )


def start_gateway(env: dict[str, str], workdir: Path, cpus: set[int] | None = None) -> tuple[Process, str]:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", "service.main:app_from_env", "--port", str(port)]
    proc = spawn(args + ["--log-level", "warning", "--no-access-log"], env, workdir / "gateway.log", cpus)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{proc.log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not start")


def tiny_mp4(seconds: float = 1.0, fps: int = 25, size: int = 64) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, mode="w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def padded_mp4(total_bytes: int) -> bytes:
    """A valid mp4 of `total_bytes`: a tiny video plus an ISO-BMFF `free` box (padding the format allows)."""
    video = tiny_mp4()
    pad = total_bytes - len(video)
    return video + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8)


async def _conn_loop(host: str, port: int, request: bytes, stop_at: float, lat: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200"), head + body
            lat.append(time.perf_counter() - t0)
            n += 1
    finally:
        writer.close()
    return n


def _load_child(url: str, path: str, seconds: float, connections: int, out: str) -> None:
    """Runs in a child process: keep-alive GETs on `connections` connections for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        stop_at = time.perf_counter() + seconds
        t0 = time.perf_counter()
        counts = await asyncio.gather(
            *(_conn_loop(host, int(port), request, stop_at, lat) for _ in range(connections))
        )
        return {"requests": sum(counts), "seconds": time.perf_counter() - t0, "latencies": lat}

    Path(out).write_text(json.dumps(asyncio.run(main())))


def get_rps(
    url: str, job_id: str, workdir: Path, seconds: float = 10.0, connections: int = 32
) -> dict[str, Any]:
    out = workdir / "load.json"
    code = (
        "import sys; from bench.bench_gateway import _load_child; "
        f"_load_child({url!r}, {f'/v1/jobs/{job_id}'!r}, {seconds}, {connections}, {str(out)!r})"
    )
    cpus = os.sched_getaffinity(0)
    client_cpus = cpus - {0} or cpus
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = spawn([sys.executable, "-c", code], env, workdir / "load.log", client_cpus)
    proc.popen.wait()
    if proc.popen.returncode != 0:
        raise RuntimeError(proc.log.read_text())
    r = json.loads(out.read_text())
    lat = sorted(r["latencies"])
    return {
        "requests": r["requests"],
        "rps": r["requests"] / r["seconds"],
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "connections": connections,
        "seconds": seconds,
    }


def upload_rate(url: str, payload: bytes, repeats: int = 5) -> dict[str, Any]:
    mb = len(payload) / 2**20
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = client.post("/v1/synthesize", files={"video": ("big.mp4", io.BytesIO(payload), "video/mp4")})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 202, r.text
            client.post(f"/v1/jobs/{r.json()['id']}/cancel")
    med = statistics.median(times)
    return {"size_mb": mb, "median_s": med, "mb_per_s": mb / med, "best_mb_per_s": mb / min(times)}


def run() -> dict[str, Any]:
    import tempfile

    base = redis_base()
    flush(base)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = service_env(base, workdir / "storage")
        gateway, url = start_gateway(env, workdir, cpus={0})
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
                r = client.post("/v1/synthesize", files={"video": ("a.mp4", tiny_mp4(), "video/mp4")})
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
            get_rps(url, job_id, workdir, seconds=2.0)  # warm-up
            rps = get_rps(url, job_id, workdir)
            upload = upload_rate(url, padded_mp4(50 * 2**20))
        finally:
            gateway.stop()
            flush(base)
    out = {"get_job": rps, "upload_50mb": upload, "gateway_processes": 1, "gateway_cpus": [0]}
    print("gateway: 1 uvicorn process pinned to CPU 0, Redis job store")
    print(f"{'measure':<34}{'value':>12}")
    print(f"{'GET /v1/jobs/{id} requests/s':<34}{rps['rps']:>12.0f}")
    print(f"{'  latency p50 / p99 (ms)':<34}{rps['p50_ms']:>6.1f} /{rps['p99_ms']:>5.1f}")
    print(f"{'upload 50 MB, MB/s (median of 5)':<34}{upload['mb_per_s']:>12.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run()

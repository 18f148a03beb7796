"""Gateway test fixtures: a REAL Redis (dedicated DB index, flushed per test), the app in-process over
httpx's ASGI transport, and small media files made with PyAV.

A missing Redis fails these tests loudly: it is never a skip.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import redis

from jobs.redis_store import RedisJobStore
from service.main import create_app
from service.settings import Settings

REDIS_DB = 13
KEY_A = "test-key-alpha"
KEY_B = "test-key-bravo"


@pytest.fixture(scope="session")
def redis_url(redis_base: str) -> str:
    return f"{redis_base}/{REDIS_DB}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, rdb: redis.Redis) -> Settings:
    return Settings(
        api_keys=f"{KEY_A},{KEY_B}",
        store_url=redis_url,
        broker_url=redis_url,
        storage_dir=tmp_path / "storage",
        max_upload_mb=1.0,
        queue_max_depth=50,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisJobStore]:
    s = RedisJobStore(settings.store_url, prefix=settings.store_prefix)
    yield s
    s.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _make_client(settings: Settings, key: str | None = KEY_A) -> httpx.AsyncClient:
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=headers
    )


@pytest.fixture
def make_client() -> Callable[..., httpx.AsyncClient]:
    """A factory: make_client(settings, key) -> an httpx client on a fresh in-process app."""
    return _make_client


@pytest.fixture
def keys() -> tuple[str, str]:
    """The two API keys the `settings` fixture accepts."""
    return KEY_A, KEY_B


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _make_client(settings) as c:
        yield c


def write_video(path: Path, seconds: float = 1.0, fps: int = 25, size: int = 32) -> Path:
    """A small H.264 mp4 of moving noise (a real, decodable video; no face needed by the gateway)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for i in range(16):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def png_bytes() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="image2pipe") as out:
        stream = out.add_stream("png", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    png = d / "frame.png"
    png.write_bytes(png_bytes())
    return {
        "video": write_video(d / "clip.mp4", 1.0),
        "video_long": write_video(d / "long.mp4", 3.0),
        "audio_only": write_audio_only(d / "audio.m4a"),
        "png": png,
    }

"""Worker readiness comes from a live signal: a wedged model thread withdraws the worker's heartbeat.

The model is a fake (the real one needs no GPU, but its speed is not the point here): its batch call
blocks on an event, which is how a hung CUDA call or a deadlock looks from the outside. The job store is
a real Redis, and `live_workers()` is exactly what the gateway's /readyz counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage
from worker.model import ModelRuntime
from worker.settings import WorkerSettings


class WedgingSynth:
    """Runs one sampling step, then blocks until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def synthesize_batch(self, requests: list[Any], progress: Callable[[int, int], None]) -> list[Any]:
        progress(1, 8)
        self.entered.set()
        self.release.wait(60)
        return [RuntimeError("released") for _ in requests]


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_wedged_model_thread_turns_readiness_false_within_the_heartbeat_window(
    store: RedisJobStore, storage: LocalStorage
) -> None:
    settings = WorkerSettings(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, model_stall_s=1.0)
    rt = ModelRuntime(settings, store, storage)
    synth = WedgingSynth()
    rt.synth = synth
    rt.batcher.admit = None  # no job record behind this item
    rt.batcher.start()
    rt.start_heartbeat()

    def live() -> bool:
        return rt.worker_id in {w["id"] for w in store.live_workers()}

    try:
        # Idle for longer than the stall limit: an idle model thread still ticks, so it stays ready.
        time.sleep(settings.model_stall_s * 1.5)
        assert rt.model_live() and live()

        rt.batcher.submit("wedge", SimpleNamespace(request_id="wedge"))
        assert synth.entered.wait(10)
        window = settings.model_stall_s + settings.heartbeat_ttl_s + settings.heartbeat_interval_s
        assert wait_for(lambda: not live(), timeout=window + 2.0), "the heartbeat outlived a wedged model"
        assert not rt.model_live()

        synth.release.set()  # the model thread comes back: so does the heartbeat
        assert wait_for(live, timeout=5.0)
        assert rt.model_live()
    finally:
        synth.release.set()
        rt.stop(timeout=5)

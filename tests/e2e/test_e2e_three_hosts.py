"""Issue 20: the gateway and two workers as three "hosts" that share nothing but Redis and the bucket.

Each host runs as its own Linux user (when the tests run as root) in its own 0700 directory (HOME,
TMPDIR, caches, DIFFV2S_STORAGE_DIR) with umask 077, and every process logs the paths it opens through an
audit hook (`tests/e2e/hosts.py`). Storage is `s3://` on a real S3 API over HTTP (moto's server, started
here). Twenty concurrent jobs go through the real API; every result is downloaded through the gateway
(streamed) and through a second gateway process that answers 307 to a presigned URL (the Python client
follows it, without its API key), and read back as a WAV of the clip's length. Then: no process touched a
path under another host's directory, none wrote outside its own, and no host left a file in /tmp,
/var/tmp or /dev/shm. A job that needed another host's file would have failed with EACCES.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import redis
import soundfile as sf
from diffv2s_client import Client
from moto.server import ThreadedMotoServer

from jobs.redis_store import RedisJobStore
from tests.e2e.conftest import free_port, healthy, video_seconds, wait_until
from tests.e2e.hosts import (
    Host,
    Machine,
    Proc,
    audit_records,
    can_switch_users,
    cross_host_paths,
    files_of_hosts_in_shared_places,
    make_machine,
    proc_ids,
    python_as,
    start,
    stop,
    writes_outside_own_dir,
)

pytestmark = pytest.mark.e2e

BROKER_DB, STORE_DB = 14, 15  # the e2e folder's databases (tests/conftest.py)
KEY = "three-hosts-key-0123456789"
BUCKET = "diffv2s-hosts"
STEPS = 2
N_JOBS = 20
HOSTS = ("gateway", "worker0", "worker1")


def wav_seconds(data: bytes) -> float:
    """A WAV that libsndfile reads: its length in seconds (and it is not silence)."""
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert pcm.ndim == 1 and rate == 22050 and abs(pcm).max() > 0
    return len(pcm) / rate


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server over HTTP, in this process (as tests/jobs/test_storage.py runs it)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = make_machine(HOSTS)
    try:
        yield m
    finally:
        m.cleanup()


def base_env(redis_base: str, s3_endpoint: str, checkpoint: Path | None) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "DIFFV2S_BROKER_URL": f"{redis_base}/{BROKER_DB}",
        "DIFFV2S_STORE_URL": f"{redis_base}/{STORE_DB}",
        "DIFFV2S_STORAGE_URL": f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}",
        "DIFFV2S_S3_ENDPOINT_URL": s3_endpoint,
        "DIFFV2S_S3_REGION": "us-east-1",
        "DIFFV2S_S3_ADDRESSING_STYLE": "path",
        "DIFFV2S_S3_ACCESS_KEY_ID": "testing",
        "DIFFV2S_S3_SECRET_ACCESS_KEY": "testing",
        "DIFFV2S_API_KEYS": KEY,
        "DIFFV2S_MAX_UPLOAD_MB": "2",
        "DIFFV2S_MAX_UPLOADS_IN_FLIGHT_PER_KEY": "64",
        "DIFFV2S_RATE_LIMIT_REQUESTS": "100000/minute",
        "DIFFV2S_HEARTBEAT_INTERVAL_S": "0.5",
        "DIFFV2S_HEARTBEAT_TTL_S": "3",
        "DIFFV2S_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    if checkpoint is not None:
        env["DIFFV2S_CHECKPOINT"] = str(checkpoint)
    return env


def image_checkpoint(machine: Machine, checkpoint: Path | None) -> Path | None:
    """A generated checkpoint (when the checkout ships none) copied where every host can read it, like a
    file of the image; the shipped one already is."""
    if checkpoint is None:
        return None
    image = machine.root / "image"
    image.mkdir(mode=0o755)
    dest = image / checkpoint.name
    dest.write_bytes(checkpoint.read_bytes())
    dest.chmod(0o644)
    return dest


def gateway(
    machine: Machine, name: str, host: Host, env: dict[str, str], logdir: Path, scratch: str, **extra: str
) -> Proc:
    port = free_port()
    proc = start(
        name,
        host,
        [machine.python, "-m", "uvicorn", "--factory", "service.main:app_from_env", "--port", str(port)],
        env | {"DIFFV2S_STORAGE_DIR": str(host.scratch(scratch))} | extra,
        logdir,
    )
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def worker(machine: Machine, host: Host, env: dict[str, str], logdir: Path) -> Proc:
    wenv = env | {
        "DIFFV2S_STORAGE_DIR": str(host.scratch()),
        "DIFFV2S_METRICS_PORT": str(free_port()),
        "DIFFV2S_MAX_BATCH_SIZE": "4",
        "DIFFV2S_CONCURRENCY": "6",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "300",
    }
    args = [machine.python, "-m", "celery", "-A", "worker.celery_app", "worker", "-n", f"{host.name}@%h"]
    args += ["--loglevel=INFO", "--without-gossip", "--without-mingle"]
    return start(host.name, host, args, wenv, logdir)


class RecordingTransport(httpx.HTTPTransport):
    """The client's real transport, remembering each request it sent (host, port, headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


async def submit_all(url: str, clips: list[Path]) -> list[str]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:

        async def submit(i: int, clip: Path) -> httpx.Response:
            files = {"video": (clip.name, clip.read_bytes(), "video/mp4")}
            return await c.post("/v1/synthesize", files=files, data={"seed": str(i), "steps": str(STEPS)})

        answers = await asyncio.gather(*(submit(i, clips[i % len(clips)]) for i in range(N_JOBS)))
    assert [r.status_code for r in answers] == [202] * N_JOBS, [
        r.text for r in answers if r.status_code != 202
    ]
    return [r.json()["id"] for r in answers]


def wait_jobs(store: RedisJobStore, ids: list[str], procs: list[Proc], timeout: float) -> None:
    def done() -> bool:
        records = [store.get(i) for i in ids]
        return all(r is not None and r.status.value in ("succeeded", "failed", "canceled") for r in records)

    wait_until(done, timeout, f"{len(ids)} jobs", procs)


def test_three_hosts_share_only_redis_and_the_bucket(
    redis_base: str,
    s3_endpoint: str,
    checkpoint: Path | None,
    clips: list[Path],
    machine: Machine,
    tmp_path: Path,
) -> None:
    for db in (BROKER_DB, STORE_DB):
        redis.Redis.from_url(f"{redis_base}/{db}").flushdb()
    gw, w0, w1 = (machine.hosts[n] for n in HOSTS)
    env = base_env(redis_base, s3_endpoint, image_checkpoint(machine, checkpoint))
    streamed = gateway(machine, "gateway", gw, gw.env(env, machine.site), tmp_path, "scratch")
    # The same host's second gateway process: downloads are a 307 to a presigned URL of the bucket.
    presign = gateway(
        machine,
        "gateway-presign",
        gw,
        gw.env(env, machine.site),
        tmp_path,
        "scratch-presign",
        DIFFV2S_STORAGE_PRESIGN_TTL_S="300",
    )
    workers = [worker(machine, h, h.env(env, machine.site), tmp_path) for h in (w0, w1)]
    procs = [streamed, presign, *workers]
    store = RedisJobStore(f"{redis_base}/{STORE_DB}")
    try:
        wait_until(lambda: all(healthy(p.url) for p in (streamed, presign)), 60, "the gateways", procs)
        wait_until(lambda: len(store.live_workers()) == 2, 180, "the worker heartbeats", procs)
        # Each process is its host's user, with umask 077.
        for p in procs:
            uid, gid, umask = proc_ids(p.popen.pid)
            if p.host.uid is not None:
                assert (uid, gid) == (p.host.uid, p.host.uid), p.name
            assert umask in ("0077", "?"), (p.name, umask)
        if can_switch_users():
            assert len({p.host.uid for p in procs}) == 3

        started = time.monotonic()
        ids = asyncio.run(submit_all(streamed.url, clips[:2]))
        wait_jobs(store, ids, procs, 600)
        elapsed = time.monotonic() - started
        records = [store.get(i) for i in ids]
        failed = [(r.id, r.error) for r in records if r is not None and r.status.value != "succeeded"]
        logs = "\n".join(p.tail() for p in procs)
        assert not failed, f"{failed}\n{logs}"
        # A record names its worker `hostname:pid`: both worker hosts took jobs.
        took = {int(r.worker.rsplit(":", 1)[1]) for r in records if r is not None and r.worker}
        assert took == {w.popen.pid for w in workers}, (took, [w.popen.pid for w in workers])
        expected = [video_seconds(clips[i % 2]) for i in range(N_JOBS)]

        # Streamed through the gateway.
        with httpx.Client(base_url=streamed.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            for job_id, seconds in zip(ids, expected, strict=True):
                r = c.get(f"/v1/jobs/{job_id}/audio")
                assert r.status_code == 200, r.text
                assert wav_seconds(r.content) == pytest.approx(seconds, rel=0.01)
                streamed_bytes = r.content
        # Presigned: the second gateway answers 307 to the bucket; the client follows it without its key.
        with httpx.Client(base_url=presign.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            r = c.get(f"/v1/jobs/{ids[-1]}/audio")
            assert r.status_code == 307 and r.headers["location"].startswith(f"{s3_endpoint}/{BUCKET}/")
        transport = RecordingTransport()
        with Client(presign.url, KEY, transport=transport) as client:
            for job_id, seconds in zip(ids, expected, strict=True):
                path = client.download(job_id, tmp_path / f"{job_id}.wav")
                assert wav_seconds(path.read_bytes()) == pytest.approx(seconds, rel=0.01)
            assert client.read_result(ids[-1]) == streamed_bytes
        s3_port = httpx.URL(s3_endpoint).port
        to_bucket = [q for q in transport.sent if q.url.port == s3_port]
        to_gateway = [q for q in transport.sent if q.url.port != s3_port]
        assert len(to_bucket) == len(to_gateway) == N_JOBS + 1
        assert all("authorization" not in q.headers for q in to_bucket), "the API key went to the bucket"
        assert all(q.headers["authorization"] == f"Bearer {KEY}" for q in to_gateway)
        print(
            f"\n{N_JOBS} jobs on two worker hosts over S3: {elapsed:.1f} s from first upload to last result"
        )
    finally:
        for p in procs:
            stop(p)
        store.close()
        for db in (BROKER_DB, STORE_DB):
            redis.Redis.from_url(f"{redis_base}/{db}").flushdb()

    # Every process loaded the audit hook (one log per process at least) ...
    for host in machine.hosts.values():
        assert len(list(host.audit.glob("audit-*.log"))) >= (2 if host is gw else 1), host.name

    # ... and it saw the storage I/O: the gateway spooled each upload in its scratch (the copy it probed)
    # and the worker hosts downloaded each input into theirs.
    def renamed_inputs(hosts: list[Host], folder: str) -> set[str]:
        marks = [f"{h.scratch()}/{folder}/inputs%2F" for h in hosts]
        return {
            a.path.split("%2F", 1)[1].removesuffix(".upload")
            for h in hosts
            for a in audit_records(h)
            if a.event == "os.rename" and any(a.path.startswith(m) for m in marks)
        }

    assert renamed_inputs([gw], "spooled") == set(ids)
    assert renamed_inputs([w0, w1], "copies") == set(ids)
    # ... no process touched another host's directory, wrote outside its own, or left a file in a place
    # all users share (that last check sees C code too: with separate users, ownership tells).
    crossed = cross_host_paths(machine)
    assert not crossed, "\n".join(map(str, crossed[:20]))
    outside = writes_outside_own_dir(machine)
    assert not outside, "\n".join(map(str, outside[:20]))
    assert files_of_hosts_in_shared_places(machine) == []
    # The gateway probed (and so removed) every spooled copy; no worker left a partial download behind.
    assert not any((gw.scratch() / "spooled").iterdir())
    for h in (w0, w1):
        assert not any((h.scratch() / "tmp").iterdir())


def test_the_checks_have_teeth(machine: Machine, tmp_path: Path) -> None:
    """A process of one host told to read a file another host wrote: refused by the kernel (Python and
    PyAV's C code alike, when the hosts are separate users) and named by the audit log check."""
    gw, w0 = machine.hosts["gateway"], machine.hosts["worker0"]
    env = {"PATH": os.environ.get("PATH", "")}
    secret = gw.scratch() / "upload.mp4"
    wrote = python_as(
        machine,
        gw,
        f"import os; os.makedirs({str(secret.parent)!r}, exist_ok=True); "
        f"open({str(secret)!r}, 'wb').write(b'not yours')",
        gw.env(env, machine.site),
    )
    assert wrote.returncode == 0, wrote.stderr
    read = python_as(
        machine,
        w0,
        "import sys\n"
        "try:\n"
        f"    open({str(secret)!r}, 'rb').read()\n"
        "except PermissionError:\n"
        "    sys.exit(13)\n"
        "import av\n"
        "try:\n"
        f"    av.open({str(secret)!r})\n"
        "except PermissionError:\n"
        "    sys.exit(14)\n",
        w0.env(env, machine.site),
    )
    if can_switch_users():
        assert read.returncode == 13, (read.returncode, read.stderr)
        # The C side too (PyAV opens the file in ffmpeg, where no audit hook looks).
        av_read = python_as(
            machine,
            w0,
            f"import av, sys\ntry:\n    av.open({str(secret)!r})\nexcept PermissionError:\n    sys.exit(14)\n",
            w0.env(env, machine.site),
        )
        assert av_read.returncode == 14, (av_read.returncode, av_read.stderr)
    crossed = cross_host_paths(machine, ["worker0"])
    assert [(a.event, a.path) for a in crossed] == [("open", str(secret))]
    assert cross_host_paths(machine, ["gateway"]) == []
    # A write to a place all users share is named too.
    shared = Path("/tmp") / f"diffv2s-hosts-leak-{uuid.uuid4().hex[:8]}"
    try:
        leak = python_as(machine, w0, f"open({str(shared)!r}, 'w').write('x')", w0.env(env, machine.site))
        assert leak.returncode == 0, leak.stderr
        assert [a.path for a in writes_outside_own_dir(machine)] == [str(shared)]
        if can_switch_users():
            assert files_of_hosts_in_shared_places(machine) == [str(shared)]
    finally:
        shared.unlink(missing_ok=True)

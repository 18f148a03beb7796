"""Blob storage throughput: a 50 MB upload (written in 1 MB chunks, as the gateway's upload parser does)
and its download (streamed in 1 MB chunks, as the gateway sends it), local directory vs an S3 endpoint,
measured in the same run.

Run: `.venv/bin/python -m bench.bench_storage` (prints a table, writes bench/results/storage.json).
The S3 endpoint is moto's server on loopback (a real S3 API over HTTP, in-memory, Python): it measures
the client path (multipart parts, HTTP, boto3), not a production object store. Set BENCH_S3_ENDPOINT (and
AWS credentials, BENCH_S3_BUCKET) to measure MinIO or a real bucket instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from jobs.settings import CommonSettings
from jobs.storage import Storage, open_storage

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 50 * 2**20
CHUNK = 1 << 20
REPEATS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(storage: Storage, key: str, keep_local_copy: bool = False) -> tuple[float, float]:
    """Upload then download SIZE bytes; `keep_local_copy` as the gateway writes an upload (a local copy
    for the probe beside the object)."""
    block = os.urandom(CHUNK)
    t0 = time.perf_counter()
    with storage.writer(key, keep_local_copy=keep_local_copy) as f:
        for _ in range(SIZE // CHUNK):
            f.write(block)
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    size, chunks = storage.iter_bytes(key, CHUNK)
    got = sum(len(c) for c in chunks)
    down = time.perf_counter() - t0
    assert got == size == SIZE
    storage.delete(key)
    return up, down


def run() -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    out: dict[str, Any] = {"size_mb": SIZE / 2**20, "repeats": REPEATS, "backends": {}}
    server = None
    endpoint = os.environ.get("BENCH_S3_ENDPOINT")
    if not endpoint:
        from moto.server import ThreadedMotoServer

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    bucket = os.environ.get("BENCH_S3_BUCKET", "diffv2s-bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s3_settings = CommonSettings(
                storage_url=f"s3://{bucket}/bench",
                storage_dir=Path(tmp) / "scratch",
                s3_endpoint_url=endpoint,
                s3_region="us-east-1",
                s3_addressing_style="path",
            )
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            if server is not None:
                client.create_bucket(Bucket=bucket)
            s3_name = "s3 (moto, loopback)" if server else f"s3 ({endpoint})"
            s3 = open_storage(s3_settings)
            # (storage, keep_local_copy): the last row is the gateway's way of writing an upload to S3.
            backends = {
                "local": (open_storage(CommonSettings(storage_dir=Path(tmp) / "local")), False),
                s3_name: (s3, False),
                f"{s3_name} + local copy": (s3, True),
            }
            print(
                f"{'backend':<34} {'upload MB/s':>12} {'download MB/s':>14}   ({SIZE / 2**20:.0f} MB, best of {REPEATS})"
            )
            for name, (storage, copy) in backends.items():
                runs = [_measure(storage, f"inputs/bench-{i}.upload", copy) for i in range(REPEATS)]
                up = min(r[0] for r in runs)
                down = min(r[1] for r in runs)
                mb = SIZE / 2**20
                row = {"upload_mb_s": round(mb / up, 1), "download_mb_s": round(mb / down, 1)}
                out["backends"][name] = row
                print(f"{name:<34} {row['upload_mb_s']:>12} {row['download_mb_s']:>14}")
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "storage.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run()

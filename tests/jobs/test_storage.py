"""The storage suite, run against local storage and against a real S3 API over HTTP (moto's standalone
server, started here): the same code talks to AWS S3, MinIO and Ceph."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from jobs import JobRecord, JobStatus, open_store
from jobs.s3_storage import MIN_PART_BYTES, S3Storage
from jobs.settings import CommonSettings
from jobs.storage import LocalStorage, Storage, StorageUnavailable, audio_key, open_storage, video_key

BUCKET = "diffv2s-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    prefix = f"run-{time.monotonic_ns()}"
    settings = CommonSettings(
        storage_url=f"s3://{BUCKET}/{prefix}",
        storage_dir=tmp_path / "scratch",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_addressing_style="path",
        s3_part_bytes=MIN_PART_BYTES,
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return settings


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(CommonSettings(storage_dir=tmp_path / "storage"))
    return open_storage(request.getfixturevalue("s3_settings"))


def s3_objects(storage: S3Storage) -> list[str]:
    out = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix + "/")
    return [o["Key"] for o in out.get("Contents", [])]


def open_uploads(storage: S3Storage) -> list[str]:
    out = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix + "/")
    return [u["Key"] for u in out.get("Uploads", [])]


def test_the_url_chooses_the_backend(storage: Storage, request: pytest.FixtureRequest) -> None:
    expected = S3Storage if "s3" in request.node.callspec.id else LocalStorage
    assert type(storage) is expected


def test_a_clean_write_appears_and_a_failed_one_leaves_nothing(storage: Storage) -> None:
    with storage.writer("results/a.wav") as f:
        f.write(b"RIFF" * 10)
    assert storage.exists("results/a.wav")
    with pytest.raises(RuntimeError), storage.writer("results/b.wav") as f:
        f.write(b"half")
        raise RuntimeError("the writer crashed")
    assert not storage.exists("results/b.wav")
    size, chunks = storage.iter_bytes("results/a.wav", chunk=7)
    assert size == 40 and b"".join(chunks) == b"RIFF" * 10


def test_a_file_larger_than_a_part_goes_up_in_parts_and_reads_back(storage: Storage) -> None:
    body = bytes(range(256)) * (12 * 2**20 // 256)  # 12 MiB: three parts of 5 MiB
    with storage.writer("inputs/big.upload") as f:
        for i in range(0, len(body), 1 << 20):
            f.write(body[i : i + (1 << 20)])
    assert storage.on_local_copy("inputs/big.upload", Path.read_bytes) == body
    if isinstance(storage, S3Storage):
        assert open_uploads(storage) == []
        assert not any(storage.scratch.iterdir()), "the probe's copy is removed after"


def test_put_file_consumes_the_scratch_file_and_delete_is_idempotent(storage: Storage) -> None:
    src = storage.scratch_path(".mp4")
    src.write_bytes(b"mp4 bytes")
    storage.put_file(video_key("j1"), src)
    assert not src.exists()
    assert storage.local_path(video_key("j1")).read_bytes() == b"mp4 bytes"
    storage.delete(video_key("j1"))
    storage.delete(video_key("j1"))
    assert not storage.exists(video_key("j1"))
    if isinstance(storage, S3Storage):
        assert not any(storage.copies.iterdir()), "delete removes the worker's local copy too"


def test_ping(storage: Storage) -> None:
    storage.ping()


def test_an_unreachable_endpoint_is_storage_unavailable(tmp_path: Path) -> None:
    settings = CommonSettings(
        storage_url="s3://nowhere/x",
        storage_dir=tmp_path,
        s3_endpoint_url=f"http://127.0.0.1:{_free_port()}",
        s3_region="us-east-1",
        s3_access_key_id="k",
        s3_secret_access_key="s",  # type: ignore[arg-type]
    )
    storage = open_storage(settings)
    with pytest.raises(StorageUnavailable):
        storage.ping()
    with pytest.raises(StorageUnavailable):
        storage.exists("results/x.wav")


def test_a_result_is_written_once(s3_settings: CommonSettings) -> None:
    """A redelivered task writing the same key again keeps the first object (If-None-Match: *)."""
    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    for content in (b"first", b"second delivery"):
        with storage.writer(audio_key("j2")) as f:
            f.write(content)
    big = b"x" * (MIN_PART_BYTES + 10)
    for content in (big, big[::-1]):  # the multipart path too
        src = storage.scratch_path(".mp4")
        src.write_bytes(content)
        storage.put_file(video_key("j2"), src)
    assert storage.local_path(audio_key("j2")).read_bytes() == b"first"
    assert storage.local_path(video_key("j2")).read_bytes() == big
    versions = [k for k in s3_objects(storage) if k.endswith("j2.wav") or k.endswith("j2.mp4")]
    assert len(versions) == 2 and open_uploads(storage) == []


def test_an_upload_over_the_limit_is_413_and_its_multipart_upload_is_aborted(
    s3_settings: CommonSettings,
) -> None:
    from service.errors import UploadTooLarge
    from service.upload import receive_upload

    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    seen: dict[str, object] = {}

    async def upload(request: Request) -> JSONResponse:
        try:
            up = await receive_upload(request, storage, request.path_params["job"], 6 * 2**20)
        except UploadTooLarge:
            seen["uploads_after_413"] = open_uploads(storage)
            return JSONResponse({"error": "too large"}, status_code=413)
        return JSONResponse({"key": up.key, "size": up.size})

    app = Starlette(routes=[Route("/{job}", upload, methods=["POST"])])
    body = b"v" * (12 * 2**20)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced on the stream itself
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]
        yield b"\r\n" + boundary + b"--\r\n"

    with TestClient(app) as client:
        headers = {"content-type": "multipart/form-data; boundary=xyz"}
        small = client.post("/ok", content=_form(b"small"), headers=headers)
        assert small.status_code == 200 and small.json()["size"] == 5
        r = client.post("/big", content=chunked(), headers=headers)
    assert r.status_code == 413
    assert seen["uploads_after_413"] == [], "the multipart upload was aborted"
    assert not storage.exists("inputs/big.upload")
    assert storage.exists("inputs/ok.upload")
    # The cut-off upload's local copy is gone too; the accepted one's waits for its probe.
    assert not any(storage.scratch.iterdir())
    assert [p.name for p in storage.spooled.iterdir()] == ["inputs%2Fok.upload"]


def test_the_gateway_probes_its_own_copy_of_an_upload_not_the_bucket(s3_settings: CommonSettings) -> None:
    """receive_upload keeps a local copy as the bytes stream to the bucket; the probe (on_local_copy, as
    the synthesize route calls it) reads that copy: no GetObject, and the copy is removed after."""
    from service.upload import receive_upload

    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    reads: list[str] = []
    for op in ("GetObject", "HeadObject"):
        storage.client.meta.events.register(
            f"before-parameter-build.s3.{op}", lambda params, **_: reads.append(params["Key"])
        )
    probed: dict[str, object] = {}

    async def upload(request: Request) -> JSONResponse:
        up = await receive_upload(request, storage, request.path_params["job"], 64 * 2**20)
        assert up.key is not None
        probed["bytes"] = storage.on_local_copy(up.key, Path.read_bytes)
        probed["reads"] = list(reads)
        return JSONResponse({"key": up.key})

    app = Starlette(routes=[Route("/{job}", upload, methods=["POST"])])
    body = bytes(range(256)) * (12 * 2**20 // 256)  # 12 MiB: three parts of 5 MiB
    with TestClient(app) as client:
        r = client.post(
            "/j1", content=_form(body), headers={"content-type": "multipart/form-data; boundary=xyz"}
        )
    assert r.status_code == 200 and r.json()["key"] == "inputs/j1.upload"
    assert probed["bytes"] == body
    assert probed["reads"] == [], "the probe read the local copy, not the bucket"
    assert not any(storage.spooled.iterdir()) and not any(storage.scratch.iterdir())
    # The object itself is complete in the bucket; another process (a worker) downloads it.
    worker = open_storage(s3_settings.model_copy(update={"storage_dir": s3_settings.storage_dir / "w"}))
    assert worker.on_local_copy("inputs/j1.upload", Path.read_bytes) == body
    assert open_uploads(storage) == []
    # A key already written keeps the first object, and no copy of the second writer's bytes is kept.
    with storage.writer("inputs/j1.upload", keep_local_copy=True) as f:
        f.write(b"another body")
    assert not any(storage.spooled.iterdir()) and not any(storage.scratch.iterdir())
    # A writer that fails leaves no copy either.
    with pytest.raises(RuntimeError), storage.writer("inputs/j2.upload", keep_local_copy=True) as f:
        f.write(b"half")
        raise RuntimeError("the client went away")
    assert not any(storage.spooled.iterdir()) and not any(storage.scratch.iterdir())
    assert not storage.exists("inputs/j2.upload")


def _form(video: bytes) -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
        + video
        + b"\r\n--xyz--\r\n"
    )


def test_presigned_download(s3_settings: CommonSettings) -> None:
    storage = open_storage(s3_settings.model_copy(update={"storage_presign_ttl_s": 60}))
    with storage.writer(audio_key("j3")) as f:
        f.write(b"RIFF-wav")
    url = storage.presigned_url(audio_key("j3"), "j3.wav", "audio/wav")
    assert url is not None and "Signature" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"RIFF-wav"
    assert r.headers["content-type"] == "audio/wav"
    assert 'filename="j3.wav"' in r.headers["content-disposition"]
    assert open_storage(s3_settings).presigned_url(audio_key("j3"), "j3.wav", "audio/wav") is None


def test_retention_the_janitor_expires_results_and_sweeps_stale_uploads(
    storage: Storage, tmp_path: Path
) -> None:
    from worker.model import expire_results
    from worker.settings import WorkerSettings

    store = open_store(f"sqlite:///{tmp_path / 'jobs.sqlite3'}", prefix="t", record_ttl_s=3600)
    settings = WorkerSettings(result_ttl_s=60, task_time_limit_s=1)
    now = time.time()
    old, fresh = (
        JobRecord(str(uuid.uuid4()), "k", JobStatus.RUNNING, now, {}, output="wav", input_key="inputs/x.mp4")
        for _ in range(2)
    )
    for j in (old, fresh):
        store.create(j, 60)
        with storage.writer(audio_key(j.id)) as f:
            f.write(b"result")
        store.compare_and_set(
            j.id,
            {JobStatus.RUNNING},
            {
                "status": JobStatus.SUCCEEDED,
                "audio_key": audio_key(j.id),
                "finished_at": now,
                "expires_at": now - 1 if j is old else now + 60,
            },
        )
    if isinstance(storage, S3Storage):  # a writer that crashed mid-upload left parts behind
        crashed = storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage._key("inputs/x"))
        assert open_uploads(storage) == [storage._key("inputs/x")]
        time.sleep(2.1)  # older than 2 * task_time_limit_s
    assert expire_results(store, storage, settings) == 1
    assert not storage.exists(audio_key(old.id)) and storage.exists(audio_key(fresh.id))
    if isinstance(storage, S3Storage):
        assert open_uploads(storage) == [], f"the stale upload {crashed['UploadId']} was aborted"
    store.close()


def test_the_readme_lifecycle_rule_is_accepted_by_the_bucket(s3_settings: CommonSettings) -> None:
    import json
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- lifecycle -->\s*```json\n(.*?)```", readme, re.S)
    assert block, "README: the bucket lifecycle rule (a json block after <!-- lifecycle -->)"
    rules = json.loads(block.group(1))
    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    storage.client.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration=rules)
    got = storage.client.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert {r["ID"] for r in got} == {r["ID"] for r in rules["Rules"]}
    assert any("AbortIncompleteMultipartUpload" in r for r in got)

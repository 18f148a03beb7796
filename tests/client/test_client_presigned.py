"""Downloads that the gateway redirects to a presigned URL of the bucket (DIFFV2S_STORAGE_PRESIGN_TTL_S >
0): the client follows the 307 and sends the presigned request WITHOUT its API key (S3 refuses a request
that carries both a signature and an Authorization header; the key is the gateway's secret). The bucket
is a real S3 API over HTTP (moto's server) and the object is written and presigned by the service's own
`S3Storage`; the gateway's side is a stand-in that answers as `service/api/routes/jobs.py` does (a 307
with the presigned URL). The full path through the real gateway runs in
tests/e2e/test_e2e_three_hosts.py."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from diffv2s_client import AsyncClient, Client, errors
from moto.server import ThreadedMotoServer

from jobs.s3_storage import S3Storage
from jobs.settings import CommonSettings
from jobs.storage import audio_key, open_storage

GATEWAY = "http://gateway.test"
KEY = "client-presign-key-0123456789"
BODY = b"RIFF" + bytes(range(256)) * 64


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Storage]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = CommonSettings(
        storage_url=f"s3://presign-test/run-{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path_factory.mktemp("scratch"),
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",  # type: ignore[arg-type]
        s3_addressing_style="path",
        storage_presign_ttl_s=60,
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.client.create_bucket(Bucket="presign-test")
    with storage.writer(audio_key("job1")) as f:
        f.write(BODY)
    yield storage
    server.stop()


class Recorder:
    """Every request the client sends: the gateway's are answered like the real route, with a 307 to the
    presigned URL; the others go over HTTP to the real bucket."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.sent: list[httpx.Request] = []
        self.http = httpx.HTTPTransport()

    def gateway(self, request: httpx.Request) -> httpx.Response:
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        job = request.url.path.split("/")[3]
        url = self.storage.presigned_url(audio_key(job), f"{job}.wav", "audio/wav")
        assert url is not None
        return httpx.Response(307, headers={"Location": url})

    def sync(self) -> httpx.BaseTransport:
        recorder = self

        class Transport(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                recorder.sent.append(request)
                if request.url.host == "gateway.test":
                    return recorder.gateway(request)
                return recorder.http.handle_request(request)

        return Transport()

    def asynchronous(self) -> httpx.AsyncBaseTransport:
        recorder = self
        http = httpx.AsyncHTTPTransport()

        class Transport(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                recorder.sent.append(request)
                if request.url.host == "gateway.test":
                    return recorder.gateway(request)
                return await http.handle_async_request(request)

        return Transport()

    def check_headers(self) -> None:
        to_gateway = [r for r in self.sent if r.url.host == "gateway.test"]
        to_bucket = [r for r in self.sent if r.url.host == "127.0.0.1"]
        assert to_gateway and len(to_bucket) == len(to_gateway)
        assert all("authorization" not in r.headers for r in to_bucket), "the API key went to the bucket"
        assert all("Signature=" in str(r.url) for r in to_bucket)


def test_the_client_follows_the_redirect_to_the_bucket_without_its_key(
    bucket: S3Storage, tmp_path: Path
) -> None:
    recorder = Recorder(bucket)
    with Client(GATEWAY, KEY, transport=recorder.sync()) as client:
        path = client.download("job1", tmp_path / "speech.wav")
        assert path.read_bytes() == BODY
        assert client.read_result("job1") == BODY
    recorder.check_headers()


@pytest.mark.anyio
async def test_the_async_client_follows_it_too(bucket: S3Storage, tmp_path: Path) -> None:
    recorder = Recorder(bucket)
    async with AsyncClient(GATEWAY, KEY, transport=recorder.asynchronous()) as client:
        path = await client.download("job1", tmp_path / "speech.wav")
        assert path.read_bytes() == BODY
        assert await client.read_result("job1") == BODY
    recorder.check_headers()


def test_an_error_from_the_bucket_is_an_error_and_no_file(bucket: S3Storage, tmp_path: Path) -> None:
    """The presigned URL of an object the bucket does not have (gone before the client came): S3's own
    error (an XML body) is raised, not saved as the result."""
    recorder = Recorder(bucket)
    with Client(GATEWAY, KEY, transport=recorder.sync()) as client, pytest.raises(errors.ApiError) as e:
        client.download("no-such-job", tmp_path / "speech.wav")
    assert e.value.status_code in (403, 404)  # S3 says 404 only to those who may list the bucket
    assert list(tmp_path.iterdir()) == []
    recorder.check_headers()

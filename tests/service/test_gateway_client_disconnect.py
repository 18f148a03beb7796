"""Issue 17, finding 7: a client that disconnects mid-upload, against a real uvicorn (as `python -m service`
configures it): no 500, no traceback in the gateway log, no 5xx in the metrics (the request is counted as
499, "client closed request"), and the partial upload is removed."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.__main__ import server_bounds
from service.main import create_app
from service.settings import Settings


@pytest.fixture
def server(settings: Settings) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: uvicorn's own loggers propagate, so caplog sees everything the server logs.
    config = uvicorn.Config(create_app(settings), log_config=None, **server_bounds(settings))
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        threading.Event().wait(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _requests(port: int) -> dict[str, float]:
    """diffv2s_http_requests of the synthesize route by status."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {
        s.labels["status"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "diffv2s_http_requests_total" and s.labels.get("route") == "/v1/synthesize"
    }


def test_a_client_that_disconnects_mid_upload_is_no_server_error(
    server: int, settings: Settings, keys: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = _requests(server)
    body = (
        b'--bnd\r\nContent-Disposition: form-data; name="video"; filename="clip.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + b"\0" * 300_000
    )
    head = (
        f"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys[0]}\r\n"
        "Content-Type: multipart/form-data; boundary=bnd\r\n"
        f"Content-Length: {2 * len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(head + body)  # half of the promised body, then the socket closes
    deadline = time.monotonic() + 30
    while _requests(server).get("499", 0) <= before.get("499", 0):
        assert time.monotonic() < deadline, f"the disconnect was never counted: {_requests(server)}"
        time.sleep(0.1)

    after = _requests(server)
    assert after.get("499", 0) == before.get("499", 0) + 1
    assert {s for s in after if s.startswith("5")} == {s for s in before if s.startswith("5")}
    assert all(after[s] == before[s] for s in after if s.startswith("5"))
    assert "client disconnected during POST /v1/synthesize" in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text and " 500" not in caplog.text
    # The partial upload does not stay behind.
    left = [p for p in Path(settings.storage_dir).rglob("*") if p.is_file()]
    assert left == [], left

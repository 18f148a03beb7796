"""Finding 4 against a real uvicorn (started as `python -m service` would configure it): a request head
that never ends is cut off at the header bound instead of growing the process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from service.__main__ import server_bounds
from service.main import create_app
from service.settings import Settings


@pytest.fixture
def server(settings: Settings) -> Iterator[int]:
    settings = settings.model_copy(update={"max_header_bytes": 16 * 1024})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", **server_bounds(settings))
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        threading.Event().wait(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def test_an_endless_header_line_is_refused_at_the_bound(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        answer = b""
        try:
            while sent < 8 * 1024 * 1024:  # far past the 16 KB bound
                conn.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = conn.recv(4096)
        except ConnectionResetError:
            pass
    # h11 refuses the unfinished head (400) and closes: the rest of the 8 MB was never accepted
    # (what was sent at all is bounded by the socket buffers, not by the header).
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.1 431")
    assert sent < 8 * 1024 * 1024


def test_normal_requests_still_work(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")

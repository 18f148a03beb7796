"""End to end: webhooks from a real Celery worker to a real HTTP receiver started here, through a real
uvicorn gateway and a real Redis. The receiver verifies every signature with `standardwebhooks`.

One worker with one task thread and batches of one; the gateway and the worker allow loopback targets.
The receiver's `/hang` path never answers until the module ends: the "slow receiver" tests show that the
job still succeeds and a cancel still works while the delivery of it hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

pytestmark = [pytest.mark.e2e]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK_ENV = {
    "DIFFV2S_WEBHOOK_SECRET": SECRET,
    "DIFFV2S_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
    "DIFFV2S_WEBHOOK_TIMEOUT_S": "2",
    "DIFFV2S_WEBHOOK_BACKOFF_S": "0.2",
    "DIFFV2S_WEBHOOK_RETRY_S": "30",
}


class Receiver:
    """A threading HTTP server that records verified deliveries by path."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.answers: dict[str, list[int]] = {}  # path -> statuses to answer first (then 204)
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/hang":
                    receiver.release.wait()
                verified = Webhook(SECRET).verify(body, dict(self.headers.items()))
                with receiver.lock:
                    pending = receiver.answers.get(self.path, [])
                    status = pending.pop(0) if pending else 204
                    receiver.received.setdefault(self.path, []).append(
                        {"id": self.headers["webhook-id"], "body": verified, "answered": status}
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def deliveries(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(path, []))

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hooks(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    env = {"DIFFV2S_MAX_BATCH_SIZE": "1", "DIFFV2S_CONCURRENCY": "1", "DIFFV2S_MAX_QUEUE_DELAY_MS": "0"}
    with cluster_tools.launch(
        redis_base, checkpoint, tmp_path_factory.mktemp("hooks"), 1, env | HOOK_ENV
    ) as c:
        yield c


@pytest.fixture(scope="module")
def gateway(hooks: Any, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any) -> Iterator[str]:
    """A gateway with the webhook settings (the cluster's own gateway has none): the same Redis."""
    with cluster_tools.extra_gateway(
        hooks, tmp_path_factory.mktemp("hookgw"), "hook-gateway", HOOK_ENV
    ) as url:
        yield url


def _client(c: Any, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {c.key_a}"}, timeout=90)


def _submit(client: httpx.Client, clip: Path, **form: str) -> httpx.Response:
    files = {"video": (clip.name, clip.read_bytes(), "video/mp4")}
    return client.post("/v1/synthesize", files=files, data={"steps": "2", **form})


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        resp = client.get(f"/v1/jobs/{job_id}")
        if resp.status_code != 429:  # the key's request rate: wait_until polls five times a second
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body
        time.sleep(float(resp.headers.get("retry-after", "1")))


def test_signed_events_arrive_in_order_and_each_attempt_is_recorded(
    hooks: Any, gateway: str, receiver: Receiver, clips: list[Path], cluster_tools: Any
) -> None:
    with _client(hooks, gateway) as client:
        resp = _submit(
            client, clips[0], webhook=f"{receiver.url}/ordered", webhook_events="start,progress,completed"
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert resp.json()["webhook"]["events"] == ["start", "progress", "completed"]
        cluster_tools.wait_until(
            lambda: any(d["body"]["type"] == "job.completed" for d in receiver.deliveries("/ordered")),
            180,
            "the completed webhook",
            hooks.workers,
        )
        # The attempt is recorded on the job once the receiver's answer is read.
        cluster_tools.wait_until(
            lambda: _job(client, job_id)["webhook"]["attempts"] == len(receiver.deliveries("/ordered")),
            30,
            "the recorded attempts",
            hooks.workers,
        )
        job = _job(client, job_id)
    got = receiver.deliveries("/ordered")
    types = [d["body"]["type"] for d in got]
    assert types[0] == "job.started" and types[-1] == "job.completed"
    assert set(types[1:-1]) <= {"job.progress"}
    assert got[-1]["body"]["data"]["status"] == "succeeded"
    assert got[-1]["body"]["data"]["urls"]["audio"] == f"/v1/jobs/{job_id}/audio"
    assert all(d["body"]["data"]["id"] == job_id for d in got)
    assert len({d["id"] for d in got}) == len(got)  # one webhook-id per event
    assert job["webhook"]["attempts"] == len(got) and job["webhook"]["last_status"] == 204


def test_a_receiver_that_answers_500_twice_gets_the_event_on_the_third_attempt(
    hooks: Any, gateway: str, receiver: Receiver, clips: list[Path], cluster_tools: Any
) -> None:
    receiver.answers["/flaky"] = [500, 500]
    with _client(hooks, gateway) as client:
        job_id = _submit(client, clips[0], webhook=f"{receiver.url}/flaky").json()["id"]
        cluster_tools.wait_until(
            lambda: _job(client, job_id)["webhook"]["delivered"] == 1,
            180,
            "the retried webhook",
            hooks.workers,
        )
        job = _job(client, job_id)
    got = receiver.deliveries("/flaky")
    assert [d["answered"] for d in got] == [500, 500, 204]
    assert len({d["id"] for d in got}) == 1  # the same message each time
    assert got[-1]["body"]["type"] == "job.completed"
    assert job["webhook"] | {"events": None} == {
        "events": None,
        "attempts": 3,
        "last_status": 204,
        "delivered": 1,
        "failed": 0,
    }


@pytest.mark.parametrize(
    "target",
    ["http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://192.168.0.1/", "ftp://example.com/"],
)
def test_a_private_or_link_local_target_is_refused_at_submit(
    hooks: Any, gateway: str, clips: list[Path], target: str
) -> None:
    with _client(hooks, gateway) as client:
        resp = _submit(client, clips[0], webhook=target)
    assert resp.status_code == 422
    assert "webhook" in resp.json()["error"]["message"]


def test_loopback_is_refused_by_a_gateway_without_the_allow_list(hooks: Any, clips: list[Path]) -> None:
    # The cluster's own gateway has no webhook settings: no secret and no allow-list.
    with _client(hooks, hooks.url) as client:
        resp = _submit(client, clips[0], webhook="http://127.0.0.1:9/hook")
    assert resp.status_code == 422


def test_a_receiver_that_never_answers_delays_neither_synthesis_nor_cancel(
    hooks: Any, gateway: str, receiver: Receiver, clips: list[Path], cluster_tools: Any
) -> None:
    with _client(hooks, gateway) as client:
        hook = {"webhook": f"{receiver.url}/hang", "webhook_events": "start,progress,completed"}
        first = _submit(client, clips[0], **hook).json()["id"]
        second = _submit(client, clips[1], **hook).json()["id"]
        third = _submit(client, clips[0], **hook).json()["id"]
        # One task thread: the third waits in the queue while the others run; its cancel is answered.
        canceled = client.post(f"/v1/jobs/{third}/cancel")
        assert canceled.status_code in (200, 202), canceled.text
        cluster_tools.wait_until(
            lambda: (
                _job(client, first)["status"] == "succeeded" and _job(client, second)["status"] == "succeeded"
            ),
            180,
            "both jobs, while their receiver hangs",
            hooks.workers,
        )
        # Both ran to the end while not one delivery was answered.
        assert receiver.deliveries("/hang") == []
        cluster_tools.wait_until(lambda: _job(client, third)["status"] == "canceled", 60, "the cancel", [])
        assert _job(client, first)["webhook"]["delivered"] == 0

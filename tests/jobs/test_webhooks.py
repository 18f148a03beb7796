"""The webhook contract: events, target policy, secrets per key, payloads (no network beyond resolving
literal addresses and `localhost`)."""

from __future__ import annotations

import ipaddress

import pytest
from standardwebhooks.webhooks import Webhook

from jobs import JobRecord, JobStatus, owner_id
from jobs.webhooks import (
    WebhookRefused,
    WebhookSettings,
    check_target,
    event_name,
    message_id,
    parse_events,
    payload,
)

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]


def test_events_default_to_completed_and_unknown_ones_are_refused() -> None:
    assert parse_events(None) == ["completed"]
    assert parse_events("") == ["completed"]
    assert parse_events("completed, start ,progress") == ["start", "progress", "completed"]
    with pytest.raises(WebhookRefused, match="finished"):
        parse_events("start,finished")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/",
        "http://172.16.3.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_target(url, [])


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http:///path", "https://user:pw@example.com/", "nonsense"]
)
def test_other_schemes_and_credentials_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_target(url, [])


def test_the_allow_list_admits_loopback_only() -> None:
    assert check_target("http://127.0.0.1:9/hook", LOOPBACK) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(WebhookRefused):
        check_target("http://10.0.0.5/", LOOPBACK)


def test_a_public_address_is_accepted() -> None:
    assert check_target("https://93.184.215.14/hook", []) == [ipaddress.ip_address("93.184.215.14")]


def test_secrets_per_key_plain_or_hashed_else_the_default() -> None:
    import hashlib

    hashed = "sha256:" + hashlib.sha256(b"key-b").hexdigest()
    s = WebhookSettings(
        webhook_secret="whsec_default", webhook_secrets={"key-a": "whsec_a", hashed: "whsec_b"}
    )
    assert s.secret_for(owner_id("key-a")) == "whsec_a"
    assert s.secret_for(owner_id("key-b")) == "whsec_b"
    assert s.secret_for(owner_id("key-c")) == "whsec_default"
    assert WebhookSettings(webhook_secrets={"key-a": "whsec_a"}).secret_for(owner_id("key-c")) is None


def test_stored_events_map_to_webhook_events() -> None:
    assert event_name({"type": "status", "status": "queued"}) is None
    assert event_name({"type": "status", "status": "preparing"}) is None
    assert event_name({"type": "status", "status": "running"}) == "start"
    assert event_name({"type": "progress", "step": 1, "total": 2}) == "progress"
    for status in ("succeeded", "failed", "canceled", "expired"):
        assert event_name({"type": "status", "status": status}) == "completed"


def test_a_payload_signed_by_the_library_verifies() -> None:
    job = JobRecord("j1", "o", JobStatus.SUCCEEDED, 1.0, {}, "mp4", "in")
    body = payload(job, "5-0", {"type": "status", "status": "succeeded", "at": 2.0})
    assert body["type"] == "job.completed"
    assert body["data"]["urls"]["video"] == "/v1/jobs/j1/video"
    failed = payload(
        job, "6-0", {"type": "status", "status": "failed", "error": {"code": "x", "message": "y"}}
    )
    assert failed["data"]["error"] == {"code": "x", "message": "y"} and "audio" not in failed["data"]["urls"]

    import json
    from datetime import UTC, datetime

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    at = datetime.now(UTC)
    data = json.dumps(body)
    msg = message_id("j1", "5-0")
    headers = {
        "webhook-id": msg,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg, at, data),
    }
    assert Webhook(secret).verify(data, headers) == body

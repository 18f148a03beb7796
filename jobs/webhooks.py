"""Webhooks: what the gateway and the workers agree on (settings, events, target policy, signing, the
follow queue). Delivery itself is `worker.webhooks`.

A job submitted with `webhook` is published by the gateway, once, to a queue of its own (`FOLLOW_QUEUE`,
not a Celery task queue: the synthesis workers never take from it). A delivery thread in each worker
takes the job from that queue and follows the job's event log (`jobs.events`): each event the job asked
for (`start`, `progress`, `completed`) is POSTed, signed per the Standard Webhooks spec, in order, retried
with exponential backoff for a bounded time. The model thread never sends anything.

Targets: `http(s)` only; the host is resolved and every address must be public unless it lies in one of
`webhook_allow_networks`. Checked at submit (422) and again before every attempt, and the request is sent
to the address that was checked (DNS rebinding cannot swap it between the check and the connection).

Secrets are per API key (`webhook_secrets`, a JSON map of key or `sha256:<hex digest of the key>` to a
secret), else `webhook_secret`; a key with neither cannot ask for webhooks. A secret is Standard
Webhooks' `whsec_` + base64 of 24 to 64 random bytes.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.record import TERMINAL, JobRecord, owner_id

EVENTS = ("start", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
FOLLOW_QUEUE = "diffv2s.webhooks"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookSettings(BaseSettings):
    """Read by the gateway (policy, secrets known) and by the workers (delivery)."""

    model_config = SettingsConfigDict(env_prefix="DIFFV2S_", extra="ignore", frozen=True)

    broker_url: str = "redis://127.0.0.1:6379/0"
    # The secret of every key without its own entry in `webhook_secrets` ("" = none).
    webhook_secret: str = ""
    # JSON object: API key (or `sha256:<hex digest of the key>`) -> secret.
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    # Comma-separated networks a target may resolve into although private, loopback or link-local
    # (e.g. "127.0.0.0/8,::1/128" for a receiver on the same host).
    webhook_allow_networks: str = ""
    # One attempt's timeout (connect + answer).
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # An event is retried for this long after its first attempt, then given up.
    webhook_retry_s: float = Field(default=600.0, ge=0)
    # The first retry waits this long, each next one twice as long, at most `webhook_max_backoff_s`.
    webhook_backoff_s: float = Field(default=1.0, gt=0)
    webhook_max_backoff_s: float = Field(default=60.0, gt=0)
    # Jobs one worker follows at once (each is one waiting thread); more wait in the queue.
    webhook_max_follow: int = Field(default=64, ge=1)
    webhook_queue: str = FOLLOW_QUEUE

    @property
    def allow_networks(self) -> list[IPNetwork]:
        return [
            ipaddress.ip_network(n.strip(), strict=False)
            for n in self.webhook_allow_networks.split(",")
            if n.strip()
        ]

    def secret_for(self, owner: str) -> str | None:
        """The signing secret of the key whose owner id is `owner` (`jobs.owner_id`), or None."""
        for key, secret in self.webhook_secrets.items():
            digest = key[len("sha256:") :].lower() if key.startswith("sha256:") else owner_id(key)
            if digest[:32] == owner:
                return secret
        return self.webhook_secret or None


class WebhookRefused(ValueError):
    """The webhook target or events are not acceptable (the gateway answers 422)."""


def parse_events(value: str | list[str] | None) -> list[str]:
    """`webhook_events` as sent (comma-separated, or repeated) -> the events, in `EVENTS` order."""
    items = value if isinstance(value, list) else (value or "").split(",")
    wanted = {e.strip() for e in items if e.strip()}
    unknown = wanted - set(EVENTS)
    if unknown:
        raise WebhookRefused(f"webhook_events: unknown event(s) {sorted(unknown)}; use {', '.join(EVENTS)}")
    return [e for e in EVENTS if e in wanted] or list(DEFAULT_EVENTS)


def is_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


def check_target(url: str, allow: list[IPNetwork]) -> list[IPAddress]:
    """Resolve the target's host; every address must be public or allowed. Returns the addresses.

    Raises WebhookRefused (a bad URL, a host that does not resolve, or a refused address)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhook: an http:// or https:// URL with a host is needed")
    if parts.username or parts.password:
        raise WebhookRefused("webhook: credentials in the URL are not accepted")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise WebhookRefused(f"webhook: the host {parts.hostname!r} does not resolve") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not is_public(address) and not any(address in net for net in allow):
            raise WebhookRefused(
                f"webhook: {parts.hostname!r} resolves to {address}, a private, loopback or link-local "
                "address (not in the allow-list)"
            )
        if address not in addresses:
            addresses.append(address)
    return addresses


def event_name(data: dict[str, Any]) -> str | None:
    """The webhook event of a stored job event (`jobs.events`): `start`, `progress`, `completed` or None."""
    if data.get("type") == "progress":
        return "progress"
    status = data.get("status")
    if status == "running":
        return "start"
    if status in {str(s) for s in TERMINAL}:
        return "completed"
    return None


def payload(job: JobRecord, event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body of one delivery: `{type, timestamp, data: {id, status, event_id, ...}}`."""
    name = event_name(data) or "status"
    base = f"/v1/jobs/{job.id}"
    body: dict[str, Any] = {
        "id": job.id,
        "event_id": event_id,
        "urls": {"job": base, "events": f"{base}/events"},
    }
    if name == "progress":
        body.update(status="running", progress={"step": data.get("step"), "total": data.get("total")})
    else:
        body["status"] = data.get("status")
    if data.get("error"):
        body["error"] = data["error"]
    if body["status"] == "succeeded":
        body["urls"]["audio"] = f"{base}/audio"
        if job.output == "mp4":
            body["urls"]["video"] = f"{base}/video"
    at = float(data.get("at") or 0.0)
    return {
        "type": f"job.{'started' if name == 'start' else name}",
        "timestamp": datetime.fromtimestamp(at, tz=UTC).isoformat().replace("+00:00", "Z"),
        "data": body,
    }


def message_id(job_id: str, event_id: str) -> str:
    """The `webhook-id` of an event: the same on every retry, so receivers can drop repeats."""
    return f"msg_{job_id}_{event_id}"


def publish_follow(settings: WebhookSettings, job_id: str) -> None:
    """Queue a job for webhook delivery; raises `jobs.queue.BrokerError`, retries nothing."""
    from kombu import Connection, Exchange, Queue

    from jobs.queue import BrokerError

    name = settings.webhook_queue
    queue = Queue(name, Exchange(name), routing_key=name)
    try:
        with Connection(settings.broker_url, connect_timeout=2) as conn:
            conn.Producer().publish(
                {"job_id": job_id},
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                serializer="json",
                retry=False,
            )
    except Exception as exc:  # kombu, redis or SQL errors by transport
        raise BrokerError(str(exc)) from exc

"""Webhook delivery, in the worker process but never on the model thread (see `jobs.webhooks`).

One consumer thread takes job ids from the follow queue (`webhook_max_follow` unacknowledged at most)
and starts a follower thread per job. A follower reads the job's event log from where the job's delivery
record says it stopped, POSTs each wanted event in order, and records every attempt on the job
(`webhook: {attempts, last_status, delivered, failed, cursor}`). A message is acknowledged only when its
job is done (its `completed` event sent or given up); a worker that stops leaves it to the next one, which
resumes from the recorded cursor. A slow or dead receiver holds one follower thread, never a task thread,
the model thread or a cancel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from jobs import TERMINAL, JobRecord, JobStore, open_store
from jobs.events import JobEvent, open_event_reader
from jobs.webhooks import (
    DEFAULT_EVENTS,
    WebhookRefused,
    WebhookSettings,
    check_target,
    event_name,
    message_id,
    payload,
)

log = logging.getLogger(__name__)

USER_AGENT = "diffv2s-webhooks/1"


class WebhookSender:
    def __init__(
        self, settings: WebhookSettings, store_url: str, store_prefix: str, record_ttl_s: int
    ) -> None:
        self.settings = settings
        self.store_url = store_url
        self.store_prefix = store_prefix
        self.store: JobStore = open_store(store_url, store_prefix, record_ttl_s)
        self._stop = threading.Event()
        self._done: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._consume, name="webhook-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- the follow queue ---

    def _consume(self) -> None:
        from kombu import Connection, Exchange, Queue

        name = self.settings.webhook_queue
        follow_queue = Queue(name, Exchange(name), routing_key=name)
        while not self._stop.is_set():
            try:
                with Connection(self.settings.broker_url, connect_timeout=2) as conn:
                    with conn.Consumer(
                        follow_queue, callbacks=[self._on_message], accept=["json"]
                    ) as consumer:
                        consumer.qos(prefetch_count=self.settings.webhook_max_follow)
                        while not self._stop.is_set():
                            self._ack_done()
                            try:
                                conn.drain_events(timeout=0.5)
                            except TimeoutError:  # socket.timeout: nothing arrived
                                pass
            except Exception as exc:  # a broker restart: reconnect; unacked messages come back
                log.warning("webhook queue: %s; reconnecting", exc)
                self._stop.wait(1.0)

    def _ack_done(self) -> None:
        # kombu channels are not thread-safe: followers hand their message back, this thread acks it.
        while True:
            try:
                message = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                message.ack()
            except Exception as exc:  # the connection it came on is gone: it will be redelivered
                log.warning("webhook queue: could not ack (%s)", exc)

    def _on_message(self, body: Any, message: Any) -> None:
        job_id = str(body.get("job_id", "")) if isinstance(body, dict) else ""
        threading.Thread(
            target=self._follow, args=(job_id, message), name=f"webhook-{job_id[:8]}", daemon=True
        ).start()

    def _follow(self, job_id: str, message: Any) -> None:
        try:
            finished = asyncio.run(self.follow(job_id)) if job_id else True
        except Exception:
            log.exception("webhook delivery of job %s failed", job_id)
            finished = True
        if finished:
            self._done.put(message)

    # --- one job ---

    async def follow(self, job_id: str) -> bool:
        """Deliver the job's wanted events until its `completed` one; False when stopped before that."""
        job = self.store.get(job_id)
        if job is None or not job.webhook_url:
            return True
        secret = self.settings.secret_for(job.owner)
        state: dict[str, Any] = {"attempts": 0, "last_status": None, "delivered": 0, "failed": 0}
        state.update(job.webhook or {})
        if secret is None:
            state["last_status"] = "no_secret"
            self.store.update_webhook(job_id, state)
            return True
        wanted = set(job.webhook_events or DEFAULT_EVENTS)
        reader = open_event_reader(self.store_url, self.store_prefix)
        try:
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
                while not self._stop.is_set():
                    events = await reader.read(job_id, state.get("cursor"), timeout_s=2.0)
                    if not events:
                        current = self.store.get(job_id)
                        if current is None:
                            return True
                        if current.status in TERMINAL:
                            # Ended: its terminal event is in the log unless the log is gone with it.
                            events = await reader.read(job_id, state.get("cursor"), timeout_s=0.5)
                            if not events:
                                return True
                        else:
                            continue
                    for i, event in enumerate(events):
                        name = event_name(event.data)
                        # A progress event with a newer one already read is stale: skip it.
                        stale = name == "progress" and i + 1 < len(events)
                        if name in wanted and not stale:
                            await self._deliver(client, job, event, secret, state)
                            if self._stop.is_set():
                                return False
                        state["cursor"] = event.id
                        if name == "completed":
                            self.store.update_webhook(job_id, state)
                            return True
                return False
        finally:
            await reader.close()

    async def _deliver(
        self, client: httpx.AsyncClient, job: JobRecord, event: JobEvent, secret: str, state: dict[str, Any]
    ) -> None:
        assert job.webhook_url is not None
        body = json.dumps(payload(job, event.id, event.data), separators=(",", ":"))
        msg_id = message_id(job.id, event.id)
        first = time.monotonic()
        delay = self.settings.webhook_backoff_s
        while True:
            status = await self._attempt(client, job.webhook_url, msg_id, body, secret)
            state["attempts"] = int(state.get("attempts") or 0) + 1
            state["last_status"] = status
            ok = isinstance(status, int) and 200 <= status < 300
            given_up = not ok and time.monotonic() - first + delay > self.settings.webhook_retry_s
            if ok:
                state["delivered"] = int(state.get("delivered") or 0) + 1
            elif given_up:
                state["failed"] = int(state.get("failed") or 0) + 1
            state["cursor"] = event.id if ok or given_up else state.get("cursor")
            self.store.update_webhook(job.id, state)
            if ok or given_up:
                if given_up:
                    log.warning("webhook %s of job %s given up after %s", msg_id, job.id, status)
                return
            if await asyncio.to_thread(self._stop.wait, delay):
                return
            delay = min(delay * 2, self.settings.webhook_max_backoff_s)

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, msg_id: str, body: str, secret: str
    ) -> int | str:
        """One POST to the address just checked; the HTTP status, or why there is none."""
        try:
            addresses = await asyncio.to_thread(check_target, url, self.settings.allow_networks)
        except WebhookRefused:
            return "refused_target"
        parts = urlsplit(url)
        address = addresses[0]
        host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        pinned = parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": parts.netloc.rsplit("@", 1)[-1],
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        }
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        timeout = self.settings.webhook_timeout_s
        try:
            response = await asyncio.wait_for(
                client.post(pinned, content=body, headers=headers, extensions=extensions, timeout=timeout),
                timeout,
            )
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"
        except httpx.HTTPError:
            return "connection_error"
        return response.status_code

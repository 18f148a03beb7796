"""What the gateway and the workers agree on about the Celery queue, and the one publisher both use.

The gateway publishes `TASK_NAME` by name with the job id as the only argument (and as the Celery task
id, so a job is one message); the worker registers the task under the same name. Neither imports the
other: the gateway publishes new jobs with `JobPublisher`, the workers' recovery watchdog publishes the
jobs it takes back with the same class.

Priorities are separate queues (`queue_names`): `{queue_name}.high`, `{queue_name}` (normal) and
`{queue_name}.low`. Workers consume them in that order, and on Redis the transport's `priority` queue
order strategy makes every poll take from the first non-empty queue, so a backlog of `low` never holds
back a `high` job (the SQL transport of the embedded mode polls its queues round-robin instead).

`JobPublisher.waiting_ids()` reads which job ids have a message waiting in the broker (not yet delivered
to any worker). The sweeper needs it to tell a queued job whose message waits (leave it) from one whose
message is gone (a gateway that crashed between writing the record and publishing, a message a killed
worker had reserved): it reads the Redis transport's lists and the SQL transport's table, read-only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery

from jobs.settings import CommonSettings

log = logging.getLogger(__name__)

TASK_NAME = "diffv2s.synthesize"

# kombu's Redis transport keeps one list per priority step: the queue's name, then name + SEP + step.
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)
# Most messages read per sweep; far above any sane queue depth limit.
_MAX_SCAN = 50_000


PRIORITIES = ("high", "normal", "low")


def queue_names(base: str) -> list[str]:
    """The queues of every priority, highest first (the order workers consume them in)."""
    return [queue_for(base, p) for p in PRIORITIES]


def queue_for(base: str, priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")
    return base if priority == "normal" else f"{base}.{priority}"


class BrokerError(Exception):
    """The broker refused or could not be reached."""


def broker_transport_options(settings: CommonSettings) -> dict[str, Any]:
    """Options both sides must agree on (the Redis visibility timeout above all)."""
    if settings.broker_url.startswith("sqla+"):
        return {}  # the SQL transport hands its options to create_engine(); none are needed
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        # Poll the queues in the order consumed (high, normal, low), not round-robin.
        "queue_order_strategy": "priority",
    }


def _message_id(payload: str | bytes) -> str | None:
    try:
        message = json.loads(payload)
        job_id = message.get("headers", {}).get("id") or message.get("properties", {}).get("correlation_id")
    except (ValueError, AttributeError):
        return None
    return str(job_id) if job_id else None


class JobPublisher:
    """Publishes job ids to the task queue; fails fast (BrokerError) instead of retrying."""

    def __init__(self, settings: CommonSettings, name: str = "diffv2s-publisher") -> None:
        self.broker_url = settings.broker_url
        self.queue_name = settings.queue_name
        self.app = Celery(name, broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options=broker_transport_options(settings),
            broker_connection_retry=False,
            broker_connection_retry_on_startup=False,
            broker_connection_max_retries=0,
            broker_connection_timeout=2,
            task_default_queue=self.queue_name,
        )

    def publish(self, job_id: str, priority: str = "normal") -> None:
        queue = queue_for(self.queue_name, priority)
        try:
            self.app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=queue, retry=False)
        except Exception as exc:  # kombu raises OperationalError, redis/OSError or SQL errors by transport
            log.warning("broker refused job %s: %s", job_id, exc)
            raise BrokerError(str(exc)) from exc

    # The gateway's name for it.
    enqueue = publish

    def ping(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            raise BrokerError(str(exc)) from exc

    def waiting_ids(self) -> set[str] | None:
        """Job ids whose message waits in the broker queue; None for a transport it cannot read.

        Raises BrokerError when the broker cannot be reached.
        """
        try:
            if self.broker_url.startswith(("redis://", "rediss://", "unix://")):
                return self._redis_waiting()
            if self.broker_url.startswith("sqla+"):
                return self._sql_waiting()
        except Exception as exc:
            raise BrokerError(str(exc)) from exc
        return None

    def _redis_waiting(self) -> set[str]:
        import redis

        keys = [
            key
            for name in queue_names(self.queue_name)
            for key in [name] + [f"{name}{_REDIS_PRIORITY_SEP}{p}" for p in _REDIS_PRIORITY_STEPS]
        ]
        client = redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=2)
        try:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.lrange(key, 0, _MAX_SCAN)
            found: set[str] = set()
            for payloads in pipe.execute():
                found.update(i for i in map(_message_id, payloads) if i)
            return found
        finally:
            client.close()

    def _sql_waiting(self) -> set[str]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.broker_url[len("sqla+") :])
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("kombu_message"):
                    return set()
                rows = conn.execute(
                    sa.text(
                        "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id"
                        " WHERE q.name IN :names AND m.visible LIMIT :n"
                    ).bindparams(sa.bindparam("names", expanding=True)),
                    {"names": queue_names(self.queue_name), "n": _MAX_SCAN},
                ).fetchall()
            return {i for i in (_message_id(r[0]) for r in rows) if i}
        finally:
            engine.dispose()

    def close(self) -> None:
        self.app.close()

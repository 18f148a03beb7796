"""The gateway's side of the Celery queue: publish a job id by task name, check the broker.

The gateway never imports the worker package: it sends `TASK_NAME` by name, with the job id as the
only argument (and as the Celery task id, so a job is one message).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from service.settings import CommonSettings

log = logging.getLogger(__name__)

TASK_NAME = "diffv2s.synthesize"


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
    }


class JobQueue:
    def __init__(self, settings: CommonSettings) -> None:
        self.queue_name = settings.queue_name
        self.app = Celery("diffv2s-gateway", broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options=broker_transport_options(settings),
            broker_connection_retry=False,
            broker_connection_retry_on_startup=False,
            broker_connection_max_retries=0,
            broker_connection_timeout=2,
            task_default_queue=self.queue_name,
        )

    def enqueue(self, job_id: str) -> None:
        try:
            self.app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=self.queue_name, retry=False)
        except Exception as exc:  # kombu raises OperationalError, redis/OSError or SQL errors by transport
            log.warning("broker refused job %s: %s", job_id, exc)
            raise BrokerError(str(exc)) from exc

    def ping(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            raise BrokerError(str(exc)) from exc

    def close(self) -> None:
        self.app.close()

"""The gateway's side of the Celery queue: publish a job id by task name (`jobs.queue`), check the broker."""

from __future__ import annotations

import logging

from celery import Celery

from jobs.queue import TASK_NAME, broker_transport_options
from jobs.settings import CommonSettings

log = logging.getLogger(__name__)


class BrokerError(Exception):
    """The broker refused or could not be reached."""


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

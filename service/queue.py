"""The gateway's side of the Celery queue: the shared publisher of `jobs.queue` under the gateway's name."""

from __future__ import annotations

from jobs.queue import BrokerError, JobPublisher

JobQueue = JobPublisher

__all__ = ["BrokerError", "JobQueue"]

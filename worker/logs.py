"""Every log line of a worker names the job it is about (issue 17).

Two context variables, set per task thread by the task signals (`worker.celery_app`) and per batch by the
model thread, are copied onto every log record as `job_id` and `request_id` (the `X-Request-ID` of the
submission, when the job record keeps it); `-` when a line is about no job. `LOG_FORMAT` prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

job_log_id: ContextVar[str] = ContextVar("diffv2s_job_id", default="-")
request_log_id: ContextVar[str] = ContextVar("diffv2s_request_id", default="-")

# Celery's own format with the two fields after the level (`worker_log_format`, `worker_task_log_format`).
LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] job=%(job_id)s request_id=%(request_id)s %(message)s"
)


def install() -> None:
    """Give every record of this process `job_id` and `request_id` attributes (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_diffv2s_job_ids", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        record.job_id = job_log_id.get()
        request_id = request_log_id.get()
        # A process that also serves the gateway (tests) may have set the gateway's request id already.
        if request_id != "-" or not hasattr(record, "request_id"):
            record.request_id = request_id
        return record

    factory._diffv2s_job_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """The current thread's lines are about this job inside the block (nested blocks restore the outer)."""
    job_token = job_log_id.set(job_id)
    request_token = request_log_id.set("-")
    try:
        yield
    finally:
        request_log_id.reset(request_token)
        job_log_id.reset(job_token)


def bind_request_id(request_id: str | None) -> None:
    """Inside `job_context`, once the job record is read: the submission's X-Request-ID."""
    request_log_id.set(request_id or "-")

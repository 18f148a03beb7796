"""The worker's Celery app: queue settings, and the model's lifecycle tied to the worker's signals.

Pool = threads: several task threads wait in the dynamic batcher at once while one model thread runs
batches (prefetch 1 per thread, so a worker holds at most `concurrency` jobs). Acks are late and a
lost worker's job is redelivered; our own time limit is below the Redis visibility timeout so Redis
never redelivers a job that is still running. (Celery's own time limits do not apply to the thread
pool; they are set for the prefork pool, and the task enforces the same limit while it waits.)

Torch and the model are loaded inside the process that runs the tasks, never in a parent that forks:
`worker_init` for the threads/solo pools, `worker_process_init` for prefork children.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from jobs.queue import broker_transport_options, queue_names
from worker import logs, metrics
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
logs.install()  # every record carries job_id / request_id (worker.logs)

settings = WorkerSettings()

app = Celery("diffv2s-worker", broker=settings.broker_url, include=["worker.tasks"])
app.conf.update(
    broker_transport_options=broker_transport_options(settings),
    broker_connection_retry_on_startup=True,
    task_default_queue=settings.queue_name,
    # Every priority's queue, highest first: consumed in this order (see jobs.queue).
    task_queues=[Queue(name, Exchange(name), routing_key=name) for name in queue_names(settings.queue_name)],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=max(1, settings.task_time_limit_s - 30),
    worker_prefetch_multiplier=1,
    worker_pool="threads",
    worker_concurrency=settings.task_threads,
    worker_send_task_events=False,
    # The SQL transport of the embedded mode has no fanout exchange for remote control.
    worker_enable_remote_control=not settings.broker_url.startswith("sqla+"),
    worker_hijack_root_logger=False,
    # Every line names its job and the request that submitted it (`-` when about no job).
    worker_log_format=logs.LOG_FORMAT,
    worker_task_log_format=logs.LOG_FORMAT,
)


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", "")
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}"
    return "prefork" in name or "processes" in name


if settings.broker_url.startswith("sqla+"):
    # The SQL transport polls its table (every 1 s by default). Its transport options go to
    # create_engine(), so the interval can only be set on the transport class.
    from kombu.transport.sqlalchemy import Transport as SqlTransport

    SqlTransport.polling_interval = 0.1


@signals.worker_init.connect
def _load_in_worker(sender: Any = None, **_: Any) -> None:
    metrics.serve(settings.metrics_port)
    if not _is_prefork(sender):
        _load_or_exit()  # load + warmup before the consumer takes any job


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    _load_or_exit()


def _load_or_exit() -> None:
    from worker.model import get_runtime

    try:
        get_runtime(settings)
    except Exception:
        # A worker without a model must not consume jobs; exit so the supervisor sees the failure.
        log.exception("the model could not be loaded; the worker exits")
        raise SystemExit(1) from None


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    from worker.model import get_runtime

    get_runtime(settings).start_heartbeat()
    _start_webhooks()
    log.info("diffv2s worker ready")


_webhooks: Any = None


def _start_webhooks() -> None:
    """Webhook delivery (`worker.webhooks`): its own queue and threads, never a task or model thread."""
    global _webhooks
    from jobs.webhooks import WebhookSettings
    from worker.webhooks import WebhookSender

    _webhooks = WebhookSender(
        WebhookSettings(broker_url=settings.broker_url),
        settings.store_url,
        settings.store_prefix,
        settings.record_ttl_s,
    )
    _webhooks.start()


@signals.worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    from worker import model

    if _webhooks is not None:
        _webhooks.stop()

    if model._runtime is not None:
        model._runtime.begin_shutdown()


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    from worker import model

    if model._runtime is not None and model._runtime.stop():
        # The model thread is still inside a batch whose jobs were handed back: leave now, without the
        # interpreter's teardown, which would abort under a thread running native (torch) code.
        log.warning("leaving with an abandoned batch still running; its jobs are back in the queue")
        logging.shutdown()
        os._exit(0)

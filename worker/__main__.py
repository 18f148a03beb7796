"""`python -m worker`: one Celery worker process with the settings from the environment."""

from __future__ import annotations

import os
import socket

from worker.celery_app import app, settings


def main() -> None:
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--hostname=diffv2s-{os.getpid()}@{socket.gethostname()}",
            f"--queues={settings.queue_name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()

"""What the gateway and the workers agree on about the Celery queue.

The gateway publishes `TASK_NAME` by name with the job id as the only argument (and as the Celery task
id, so a job is one message); the worker registers the task under the same name. Neither imports the
other.
"""

from __future__ import annotations

from typing import Any

from jobs.settings import CommonSettings

TASK_NAME = "diffv2s.synthesize"


def broker_transport_options(settings: CommonSettings) -> dict[str, Any]:
    """Options both sides must agree on (the Redis visibility timeout above all)."""
    if settings.broker_url.startswith("sqla+"):
        return {}  # the SQL transport hands its options to create_engine(); none are needed
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
    }

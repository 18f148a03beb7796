"""`python -m service`: serve the gateway with uvicorn (several processes with DIFFV2S_WEB_CONCURRENCY).

Prepares the Prometheus multiprocess directory before any process imports prometheus_client, which
reads PROMETHEUS_MULTIPROC_DIR at import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import uvicorn

from service.settings import Settings


def server_bounds(settings: Settings) -> dict[str, Any]:
    """uvicorn's bounds on what an unauthenticated client can hold (issue 17, finding 4).

    h11, not httptools: httptools sets no limit on a header line, so a client sending a 200 MB header
    with no end grows the process; h11 refuses an unfinished request head past `max_header_bytes`.
    `limit_concurrency` answers 503 past that many connections; `timeout_keep_alive` closes idle ones.
    A client trickling a body is bounded by the reverse proxy in front (README "Limits").
    """
    return {
        "http": "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
    }


# Every line names its request (`request_id`: the X-Request-ID the response carries; `-` outside a request).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"
ACCESS_LOG_FORMAT = (
    '%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(client_addr)s - "%(request_line)s" '
    "%(status_code)s"
)


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's `log_config` (a `logging.config.dictConfig`): uvicorn's own loggers, its access log and
    the gateway's loggers (`service`, `jobs`) print the request id of the line. The id is read by a
    handler filter (`service.security.RequestIdFilter`), so a record made outside the app (uvicorn's
    access log, startup lines) has one too."""
    lvl = level.upper()
    handler = {"class": "logging.StreamHandler", "filters": ["request_id"], "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.security.RequestIdFilter"}},
        "formatters": {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": LOG_FORMAT, "use_colors": False},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": ACCESS_LOG_FORMAT,
                "use_colors": False,
            },
        },
        "handlers": {
            "default": handler | {"formatter": "default"},
            "access": handler | {"formatter": "access", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["access"], "level": lvl, "propagate": False},
            "service": {"level": lvl},
            "jobs": {"level": lvl},
        },
        # Libraries' own lines (httpx, redis, kombu): warnings and errors.
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def main() -> None:
    settings = Settings()
    mp_dir = settings.prometheus_multiproc_dir
    if mp_dir is None and settings.web_concurrency > 1:
        mp_dir = Path("var/prometheus")
    if mp_dir is not None:
        # Wiped here with the standard library: importing service.metrics would create metric files in a
        # directory that may not exist yet. The uvicorn processes read the variable themselves.
        mp_dir = mp_dir.resolve()
        shutil.rmtree(mp_dir, ignore_errors=True)
        mp_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    uvicorn.run(
        "service.main:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        proxy_headers=True,
        log_level="info",
        log_config=log_config("info"),
        **server_bounds(settings),
    )


if __name__ == "__main__":
    main()

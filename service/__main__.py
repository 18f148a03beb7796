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
        **server_bounds(settings),
    )


if __name__ == "__main__":
    main()

"""`python -m service`: serve the gateway with uvicorn (several processes with DIFFV2S_WEB_CONCURRENCY).

Prepares the Prometheus multiprocess directory before any process imports prometheus_client, which
reads PROMETHEUS_MULTIPROC_DIR at import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import uvicorn

from service.settings import Settings


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
    )


if __name__ == "__main__":
    main()

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
    if settings.web_concurrency > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path("var/prometheus").resolve())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Wiped here with the standard library: importing service.metrics would create metric files in a
        # directory that may not exist yet.
        mp_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(mp_dir, ignore_errors=True)
        mp_dir.mkdir(parents=True)
    uvicorn.run(
        "service.main:app_from_env",
        factory=True,
        host=settings.host,
        port=int(os.environ.get("PORT", settings.port)),
        workers=settings.web_concurrency,
        proxy_headers=True,
        log_level="info",
    )


if __name__ == "__main__":
    main()

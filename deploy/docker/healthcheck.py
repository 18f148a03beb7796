#!/usr/bin/env python3
"""Container health probe for the DiffV2S image (standard library only; it runs every few seconds).

    diffv2s-healthcheck                     # the role the entrypoint started (gateway or worker)
    diffv2s-healthcheck URL                 # healthy when URL answers 2xx
    diffv2s-healthcheck URL METRIC          # ... and the Prometheus text at URL has METRIC >= 1

A worker is healthy only while `diffv2s_model_live` is 1: it is 0 while a replica still builds engines
or loads weights (so `docker compose ps` and the orchestrator do not count it as capacity), and it falls
back to 0 when the model thread stops ticking (wedged), however alive the process looks.
Exit status: 0 healthy, 1 unhealthy (Docker's convention).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROLE_FILE = Path(os.environ.get("DIFFV2S_ROLE_FILE", "/tmp/diffv2s-role"))
TIMEOUT_S = 4.0
# No ProxyHandler: the probe targets this container's own loopback, and an HTTP_PROXY set for the
# application's outbound traffic would otherwise route it to the proxy and mark the container unhealthy.
_OPENER = urllib.request.OpenerDirector()
for _handler in (
    urllib.request.HTTPHandler(),
    urllib.request.HTTPDefaultErrorHandler(),
    urllib.request.HTTPErrorProcessor(),
):
    _OPENER.add_handler(_handler)


def metric_values(text: str, name: str) -> list[float]:
    """Values of every sample of `name` (any labels) in Prometheus text exposition format."""
    values = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] == "{":
            rest = rest[rest.index("}") + 1 :]
        elif rest[:1] not in (" ", "\t"):
            continue  # another metric whose name starts with `name`
        try:
            values.append(float(rest.split()[0]))
        except (IndexError, ValueError):
            continue
    return values


def probe(url: str, metric: str | None = None) -> tuple[bool, str]:
    """(healthy, reason) for one URL, optionally requiring `metric` >= 1 in its body."""
    try:
        with _OPENER.open(url, timeout=TIMEOUT_S) as resp:
            body = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} unreachable: {exc}"
    if metric is None:
        return True, f"{url} ok"
    values = metric_values(body, metric)
    if not values:
        return False, f"{metric} not exposed at {url}"
    if max(values) < 1:
        return False, f"{metric} is {max(values):g} at {url}"
    return True, f"{metric} is {max(values):g}"


def default_target() -> tuple[str, str | None] | None:
    """The URL (and metric) to probe for the role the entrypoint recorded; None = nothing to probe."""
    try:
        role = ROLE_FILE.read_text().strip()
    except OSError:
        return None
    if role == "gateway":
        return f"http://127.0.0.1:{os.environ.get('DIFFV2S_PORT', '8000')}/healthz", None
    if role == "worker":
        port = os.environ.get("DIFFV2S_METRICS_PORT", "9101")
        return f"http://127.0.0.1:{port}/metrics", "diffv2s_model_live"
    return None


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        print("usage: diffv2s-healthcheck [URL [METRIC]]", file=sys.stderr)
        return 2
    target = (argv[0], argv[1] if len(argv) > 1 else None) if argv else default_target()
    if target is None:
        print("no gateway or worker role recorded: nothing to probe")
        return 0
    healthy, reason = probe(*target)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

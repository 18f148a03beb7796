"""`make bench`: run every benchmark module in one process and print each table.

Each `bench/bench_*.py` exposes `run() -> dict`, prints its own table and writes JSON under
bench/results/. Pass module names to run a subset: `python -m bench.run_all denoiser queue`.
Every `bench_*` module is found by name, so a new one runs without being listed here. The ones that
start a real gateway and Celery workers (`bench_gateway`, `bench_queue`, `bench_worker_throughput`:
the worker's overlap of preprocessing with model work, jobs/s at 1 and 2 clients) need Redis at
DIFFV2S_BENCH_REDIS (default redis://127.0.0.1:6379; DB 10 and 11 are flushed).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
    )
    if argv:
        names = [n for n in names if n.removeprefix("bench_") in argv or n in argv]
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {}
    failed = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            summary[name] = importlib.import_module(f"bench.{name}").run()
        except Exception:  # one failing bench must not hide the others' tables
            traceback.print_exc()
            failed += 1
            summary[name] = {"error": traceback.format_exc(limit=3)}
        print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    (RESULTS / "all.json").write_text(json.dumps(summary, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

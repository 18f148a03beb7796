"""The gateway's OpenAPI document, as committed in `docs/openapi.json`.

`python -m service.openapi` rewrites the file (`make openapi`); `--check` exits 1 when the app's schema and
the file differ (the test suite runs the same comparison). The document does not depend on settings: it is
built with a throwaway SQLite store and storage folder and no environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def build() -> dict[str, Any]:
    """The schema the app serves at /openapi.json."""
    from service.main import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="diffv2s-openapi-") as d:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            environment="dev",
            api_keys="schema-only-key-0123456789abcdef",
            store_url=f"sqlite:///{Path(d) / 'jobs.db'}",
            storage_dir=Path(d) / "storage",
        )
        app = create_app(settings)
        schema = app.openapi()
        app.state.store.close()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.openapi", description=__doc__)
    p.add_argument("--out", type=Path, default=DOCUMENT, help="file to write (default: docs/openapi.json)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    args = p.parse_args(argv)
    text = render(build())
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out.name} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

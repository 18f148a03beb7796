"""Shared test set-up: test helper modules next to the tests are importable by name."""

import sys
from pathlib import Path

for sub in ("diffv2s",):
    path = str(Path(__file__).parent / sub)
    if path not in sys.path:
        sys.path.insert(0, path)

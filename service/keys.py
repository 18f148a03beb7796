"""API keys: hash one for a key file (`python -m service.keys hash`), and look a presented key up.

A key file in production holds `sha256:<hex>` lines, never the keys: a leaked file or backup gives
no one access. The owner id of a job is the first 32 hex digits of the same digest (`jobs.owner_id`).
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import secrets
import sys

from service.settings import HASH_PREFIX, hash_key


class KeyRing:
    """Accepted key digests; `owner(key)` compares against every digest in constant time."""

    def __init__(self, digests: frozenset[str]) -> None:
        self._digests = sorted(digests)

    def owner(self, key: str) -> str | None:
        """The owner id of `key`, or None. The time taken does not depend on which digest matches."""
        presented = hash_key(key)
        found: str | None = None
        for digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = digest
        return None if found is None else found[:32]

    def __len__(self) -> int:
        return len(self._digests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.keys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hash", help="print the key-file line of a key (read from stdin, or prompted)")
    h.add_argument("--new", action="store_true", help="make a new random key; print it and its line")
    args = parser.parse_args(argv)
    if args.command == "hash":
        if args.new:
            key = secrets.token_urlsafe(32)
            print(f"key (give to the client; not stored): {key}", file=sys.stderr)
        elif sys.stdin.isatty():
            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.readline().strip()
        if not key:
            parser.error("empty key")
        print(f"{HASH_PREFIX}{hash_key(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

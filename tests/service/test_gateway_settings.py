"""Settings are validated at start: insecure or inconsistent configurations are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, hash_key

LONG = "k" * 32


def test_keys_from_env_list_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n\n  file-key-2  # laptop\n")
    monkeypatch.setenv("DIFFV2S_API_KEYS", " env-key-1 , env-key-2,")
    monkeypatch.setenv("DIFFV2S_API_KEYS_FILE", str(keys))
    s = Settings()
    # Held as SHA-256 digests only: the settings object keeps no usable key.
    assert s.api_key_set == {hash_key(k) for k in ("env-key-1", "env-key-2", "file-key-1", "file-key-2")}


def test_no_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="no API key"):
        Settings(api_keys=" , ")


def test_prod_refuses_short_keys_and_embedded_backends() -> None:
    with pytest.raises(ValidationError, match="shorter than"):
        Settings(environment="prod", api_keys="short")
    with pytest.raises(ValidationError, match="SQLite job store"):
        Settings(environment="prod", api_keys=LONG, store_url="sqlite:///var/jobs.sqlite3")
    with pytest.raises(ValidationError, match="SQL broker"):
        Settings(environment="prod", api_keys=LONG, broker_url="sqla+sqlite:///var/b.sqlite3")
    assert Settings(environment="prod", api_keys=LONG).environment == "prod"
    # The same short key is fine for local development.
    assert Settings(api_keys="short").api_key_set == {hash_key("short")}


def test_time_limit_must_stay_below_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        Settings(api_keys="k", task_time_limit_s=3600, visibility_timeout_s=3600)


def test_the_video_limit_defaults_are_the_librarys() -> None:
    """The limits live in jobs.settings.CommonSettings (no model import there); their defaults must stay
    the library's DEFAULT_LIMITS, which the decoder falls back to."""
    from diffv2s.video.decode import DEFAULT_LIMITS

    limits = Settings(api_keys="k").video_limits
    assert (limits.max_pixels, limits.max_fps, limits.max_frames) == (
        DEFAULT_LIMITS.max_pixels,
        DEFAULT_LIMITS.max_fps,
        DEFAULT_LIMITS.max_frames,
    )

"""Access control and leaks (in-process app, real Redis): hashed keys, request ids, security headers,
CORS off by default, per-key quotas with Retry-After, /readyz without raw errors, bounded metric labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.embedded import banner, worker_env
from service.keys import main as keys_main
from service.settings import Settings, hash_key

pytestmark = pytest.mark.anyio


async def test_every_response_has_a_request_id_and_security_headers(client: httpx.AsyncClient) -> None:
    for resp in (
        await client.get("/healthz"),
        await client.get("/v1/jobs/nope"),
        await client.get("/no/such/route"),
        await client.post("/v1/synthesize", json={}),
    ):
        assert len(resp.headers["X-Request-ID"]) >= 8
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "access-control-allow-origin" not in resp.headers  # CORS is off unless configured
    mine = await client.get("/healthz", headers={"X-Request-ID": "client-chosen-id-42"})
    assert mine.headers["X-Request-ID"] == "client-chosen-id-42"
    bad = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["X-Request-ID"] != "bad id\twith spaces"


async def test_cors_only_for_configured_origins(
    settings: Settings, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    settings = settings.model_copy(update={"cors_origins": "https://app.example"})
    async with make_client(settings) as c:
        ok = await c.get("/healthz", headers={"Origin": "https://app.example"})
        other = await c.get("/healthz", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_hashed_key_file_authenticates(
    tmp_path: Path, settings: Settings, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    key = "a-long-enough-production-key-0123456789"
    keys = tmp_path / "keys"
    keys.write_text(f"# prod keys\nsha256:{hash_key(key)}  # team a\n")
    settings = settings.model_copy(update={"api_keys": "", "api_keys_file": keys})
    settings.__dict__.pop("_key_entries", None)
    settings.__dict__.pop("api_key_set", None)
    async with make_client(settings, key) as c:
        assert (await c.get("/v1/jobs")).status_code == 200
    async with make_client(settings, f"sha256:{hash_key(key)}") as c:
        assert (await c.get("/v1/jobs")).status_code == 401  # the stored hash is not a key


def test_hash_command_prints_a_key_file_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("my-key\n"))
    assert keys_main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == f"sha256:{hash_key('my-key')}"


async def test_request_rate_per_key_is_429_with_retry_after(
    settings: Settings, make_client: Callable[..., httpx.AsyncClient], keys: tuple[str, str]
) -> None:
    settings = settings.model_copy(update={"rate_limit_requests": "3/minute"})
    async with make_client(settings, keys[0]) as a, make_client(settings, keys[1]) as b:
        codes = [(await a.get("/v1/jobs")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await a.get("/v1/jobs")
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert (await b.get("/v1/jobs")).status_code == 200  # the other key has its own window


async def test_jobs_in_flight_per_key_is_429(
    settings: Settings,
    make_client: Callable[..., httpx.AsyncClient],
    keys: tuple[str, str],
    media: dict[str, Path],
) -> None:
    settings = settings.model_copy(update={"max_jobs_in_flight_per_key": 1})
    video = {"video": ("a.mp4", media["video"].read_bytes(), "video/mp4")}
    async with make_client(settings, keys[0]) as a, make_client(settings, keys[1]) as b:
        assert (await a.post("/v1/synthesize", files=video)).status_code == 202
        second = await a.post("/v1/synthesize", files=video)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_jobs_in_flight"
        assert "Retry-After" in second.headers
        assert (await b.post("/v1/synthesize", files=video)).status_code == 202


async def test_readyz_does_not_leak_dependency_errors(
    settings: Settings, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    settings = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    async with make_client(settings, None) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 503
    body = resp.text
    assert "127.0.0.1" not in body and str(settings.storage_dir) not in body
    assert resp.json()["checks"]["broker"] == "error: unreachable"


async def test_unknown_methods_share_one_metric_label(client: httpx.AsyncClient) -> None:
    for method in ("PROPFIND", "PURGE", "BREW"):
        await client.request(method, "/healthz")
    text = (await client.get("/metrics")).text
    assert 'method="OTHER"' in text
    assert "PROPFIND" not in text and "PURGE" not in text and "BREW" not in text


def test_embedded_banner_and_worker_env_hold_no_operator_key() -> None:
    assert "operator-secret" not in banner("http://x", None, False)
    env = worker_env({"DIFFV2S_API_KEYS": "operator-secret", "DIFFV2S_API_KEYS_FILE": "/k", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}

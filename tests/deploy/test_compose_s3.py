"""The S3 variant of the stack (docker-compose.s3.yml over docker-compose.yml), checked statically with
Debian's docker-compose: gateway and workers share no volume, only Redis and the bucket."""

from __future__ import annotations

import re
from pathlib import Path

from jobs.settings import CommonSettings
from tests.deploy.test_deploy_static import COMPOSE, ROOT, compose_config

COMPOSE_S3 = ROOT / "docker-compose.s3.yml"


def model() -> dict:  # type: ignore[type-arg]
    return compose_config(COMPOSE, COMPOSE_S3)


def test_the_s3_variant_is_valid_and_needs_no_variable_from_the_shell() -> None:
    assert not re.search(r"\$\{[A-Za-z0-9_]+:?\?", COMPOSE_S3.read_text())
    services = model()["services"]
    assert {"minio", "minio-init", "gateway", "worker", "redis"} <= set(services)


def mounts(m: dict, service: str) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    """(source, target) of each mount; an anonymous volume has the source ""."""
    out = []
    for v in m["services"][service].get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append(("", parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
        else:
            out.append((v.get("source", ""), v["target"]))
    return out


def test_gateway_and_workers_share_no_volume_and_scratch_is_their_own() -> None:
    m = model()
    named = set(m.get("volumes", {}))
    for name in ("gateway", "worker"):
        scratch = m["services"][name]["environment"]["DIFFV2S_STORAGE_DIR"]
        assert ("", scratch) in mounts(m, name), f"{name}: DIFFV2S_STORAGE_DIR is an anonymous volume"
        assert "storage" not in {src for src, _ in mounts(m, name)}, f"{name} mounts the shared volume"
    shared = {s for s, _ in mounts(m, "gateway") if s in named} & {
        s for s, _ in mounts(m, "worker") if s in named
    }
    assert shared == set(), f"gateway and worker share {shared}"


def test_the_storage_settings_parse_and_credentials_are_a_secret_file() -> None:
    m = model()
    for name in ("gateway", "worker"):
        env = m["services"][name]["environment"]
        settings = CommonSettings(
            **{k.removeprefix("DIFFV2S_").lower(): v for k, v in env.items() if k.startswith("DIFFV2S_S")}
        )
        assert settings.storage_url.startswith("s3://") and settings.s3_endpoint_url == "http://minio:9000"
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/s3_credentials"
        assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env), "credentials by file only"
        assert "s3_credentials" in str(m["services"][name]["secrets"])
    bucket = m["services"]["gateway"]["environment"]["DIFFV2S_STORAGE_URL"][5:].split("/")[0]
    assert f"local/{bucket}" in str(m["services"]["minio-init"]["command"])


def test_minio_publishes_only_its_console_on_loopback() -> None:
    ports = model()["services"]["minio"].get("ports", [])
    assert ports and all(
        str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports
    )


def test_the_secret_script_writes_what_the_variant_mounts(tmp_path: Path) -> None:
    import subprocess

    env = {"DIFFV2S_SECRETS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", str(ROOT / "deploy/secrets/create-s3")], env=env, check=True, capture_output=True)
    for secret in model()["secrets"]:
        if secret.startswith(("s3_", "minio_")):
            assert (tmp_path / Path(model()["secrets"][secret]["file"]).name).is_file()
    ini = (tmp_path / "s3_credentials").read_text()
    assert (tmp_path / "minio_root_password").read_text().strip() in ini

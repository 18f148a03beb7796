"""The image's entrypoint and healthcheck, run as real processes.

The GPU claim and the engine build lock are shell logic that only meets a GPU inside Docker; here the
functions run in real `sh` processes with real `flock` on a temporary "shared volume". `nvidia-smi` and
`diffv2s export` are replaced by tiny scripts on PATH that print fixed GPU ids / write engine files,
because this machine has no GPU: what is under test is the locking and caching, not those tools.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
GPUS = ["GPU-aaaaaaaa-0000", "GPU-bbbbbbbb-1111"]


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """A PATH folder with an `nvidia-smi` listing two GPUs and a `diffv2s` whose export is slow."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *uuid*) printf "%s\\n" {" ".join(GPUS)} ;;\n'
        '  *name*) echo "NVIDIA Test GPU" ; echo "NVIDIA Test GPU" ;;\n'
        "esac\n"
    )
    exporter = bin_dir / "diffv2s"
    # Records each build, takes long enough that concurrent replicas really overlap.
    exporter.write_text(
        "#!/bin/sh\n"
        '[ "$1" = export ] && [ "$2" = --out ] && [ "$4" = --int8 ] || exit 2\n'
        'echo "$$" >>"$DIFFV2S_TEST_BUILD_LOG"\n'
        "sleep 1\n"
        'mkdir -p "$3" && echo engine >"$3/denoiser.engine"\n'
    )
    for f in (smi, exporter):
        f.chmod(0o755)
    return bin_dir


def run_functions(script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Source the entrypoint's functions in a fresh `sh` and run `script` there."""
    base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.Popen(
        ["sh", "-c", f'. "{ENTRYPOINT}"; {script}'],
        env={**base, "DIFFV2S_ENTRYPOINT_LIB": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"nothing written to {path}")


def test_each_replica_claims_a_different_gpu_and_a_surplus_one_waits(fake_bin: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"  # the shared gpu-claims volume
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_GPU_CLAIM_DIR": str(claims),
        "DIFFV2S_GPU_CLAIM_RETRY_S": "0.1",
    }
    procs, outs = [], []
    try:
        for i in range(3):
            out = tmp_path / f"replica{i}.txt"
            outs.append(out)
            # Like the worker after `exec`: the process keeps running, holding its claim.
            procs.append(
                run_functions(f'claim_gpu; echo "$CUDA_VISIBLE_DEVICES" >"{out}"; exec sleep 30', env)
            )
            if i < 2:
                wait_for_line(out)
        first, second = outs[0].read_text().strip(), outs[1].read_text().strip()
        assert {first, second} == set(GPUS)
        time.sleep(0.5)
        assert not outs[2].exists(), "a third replica must not share a GPU"
        # The first replica stops (container removed): its claim is released with its file descriptor.
        procs[0].kill()
        procs[0].wait()
        assert wait_for_line(outs[2]) == first
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert "every GPU is held" in (procs[2].stderr.read() if procs[2].stderr else "")


def test_operator_pinned_gpu_is_respected(fake_bin: Path, tmp_path: Path) -> None:
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_GPU_CLAIM_DIR": str(tmp_path / "claims"),
        "CUDA_VISIBLE_DEVICES": "3",
    }
    proc = run_functions('claim_gpu; echo "$CUDA_VISIBLE_DEVICES"', env)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == "3"
    assert not (tmp_path / "claims").exists()


def test_engines_are_built_once_and_shared_by_concurrent_replicas(fake_bin: Path, tmp_path: Path) -> None:
    cache = tmp_path / "engine-cache"
    log = tmp_path / "builds.log"
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_ENGINE": "tensorrt",
        "DIFFV2S_ENGINE_DIR": str(cache),
        "DIFFV2S_TEST_BUILD_LOG": str(log),
    }
    procs = [run_functions('build_engines; echo "$DIFFV2S_ENGINE_DIR"', env) for _ in range(3)]
    dirs = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        dirs.append(out.strip())
    assert len(log.read_text().split()) == 1, "exactly one replica builds"
    assert len(set(dirs)) == 1
    built = Path(dirs[0])
    assert built.parent == cache and (built / ".complete").is_file()
    assert (built / "denoiser.engine").read_text() == "engine\n"
    assert "NVIDIA_Test_GPU" in built.name  # engines are keyed by the GPU model
    # A restart reuses the cache without building again.
    again = run_functions('build_engines; echo "$DIFFV2S_ENGINE_DIR"', env)
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0 and out.strip() == dirs[0]
    assert len(log.read_text().split()) == 1 and "reusing" in err


def test_torch_engine_needs_no_build(fake_bin: Path, tmp_path: Path) -> None:
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_ENGINE": "torch",
        "DIFFV2S_ENGINE_DIR": str(tmp_path / "cache"),
        "DIFFV2S_TEST_BUILD_LOG": str(tmp_path / "builds.log"),
    }
    proc = run_functions("build_engines", env)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not (tmp_path / "builds.log").exists()


# ---- healthcheck -----------------------------------------------------------------------------------------


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        code = 200 if self.path in ("/metrics", "/healthz") else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def metrics_server() -> Iterator[tuple[str, type[_Metrics]]]:
    handler = type("Handler", (_Metrics,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


def test_worker_is_healthy_only_with_its_model_live(metrics_server: tuple[str, type[_Metrics]]) -> None:
    url, handler = metrics_server
    handler.body = (
        b"# HELP diffv2s_model_live_total_x decoy\n"
        b"diffv2s_model_live_total_x 1.0\n"
        b"# TYPE diffv2s_model_live gauge\n"
        b"diffv2s_model_live 0.0\n"
    )
    loading = healthcheck(f"{url}/metrics", "diffv2s_model_live")
    assert loading.returncode == 1, loading.stdout
    handler.body = b'diffv2s_model_live{engine="torch"} 1.0\n'
    ready = healthcheck(f"{url}/metrics", "diffv2s_model_live")
    assert ready.returncode == 0, ready.stdout
    handler.body = b"diffv2s_worker_up 1.0\n"
    missing = healthcheck(f"{url}/metrics", "diffv2s_model_live")
    assert missing.returncode == 1 and "not exposed" in missing.stdout


def test_healthcheck_fails_on_errors_and_unreachable_ports(
    metrics_server: tuple[str, type[_Metrics]],
) -> None:
    url, _ = metrics_server
    assert healthcheck(f"{url}/healthz").returncode == 0
    assert healthcheck(f"{url}/missing").returncode == 1
    assert healthcheck("http://127.0.0.1:9/healthz").returncode == 1


def test_healthcheck_without_arguments_probes_the_recorded_role(
    metrics_server: tuple[str, type[_Metrics]], tmp_path: Path
) -> None:
    url, handler = metrics_server
    port = url.rsplit(":", 1)[1]
    role = tmp_path / "role"
    env = {"DIFFV2S_ROLE_FILE": str(role), "DIFFV2S_PORT": port, "DIFFV2S_METRICS_PORT": port}
    assert healthcheck(env=env).returncode == 0  # no role recorded (e.g. a one-off export run)
    role.write_text("worker\n")
    handler.body = b"diffv2s_model_live 0.0\n"
    assert healthcheck(env=env).returncode == 1
    handler.body = b"diffv2s_model_live 1.0\n"
    assert healthcheck(env=env).returncode == 0
    role.write_text("gateway\n")
    handler.body = b"ok"
    assert healthcheck(env=env).returncode == 0

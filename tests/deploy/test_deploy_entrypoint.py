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
# `nvidia-smi -L` as the driver prints it: two whole GPUs.
SMI_LIST = "".join(f"GPU {i}: NVIDIA Test GPU (UUID: {uuid})\n" for i, uuid in enumerate(GPUS))
# GPU 0 in MIG mode with two MIG devices, GPU 1 whole.
MIGS = ["MIG-11111111-aaaa", "MIG-22222222-bbbb"]
SMI_LIST_MIG = (
    f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {GPUS[0]})\n"
    f"  MIG 3g.20gb     Device  0: (UUID: {MIGS[0]})\n"
    f"  MIG 3g.20gb     Device  1: (UUID: {MIGS[1]})\n"
    f"GPU 1: NVIDIA A100-SXM4-40GB (UUID: {GPUS[1]})\n"
)


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """A PATH folder with an `nvidia-smi -L` listing two GPUs (from smi-list.txt beside it, which a test
    may rewrite) and a `diffv2s` whose export is slow."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smi-list.txt").write_text(SMI_LIST)
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = -L ] || exit 9\ncat "$(dirname "$0")/smi-list.txt"\n')
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


def test_a_gpu_in_mig_mode_is_claimed_as_its_mig_devices(fake_bin: Path, tmp_path: Path) -> None:
    (fake_bin / "smi-list.txt").write_text(SMI_LIST_MIG)
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_GPU_CLAIM_DIR": str(tmp_path / "claims"),
        "DIFFV2S_GPU_CLAIM_RETRY_S": "0.1",
    }
    listed = run_functions("claimable_devices", env)
    out, err = listed.communicate(timeout=10)
    assert listed.returncode == 0, err
    assert sorted(out.split()) == sorted([*MIGS, GPUS[1]]), "a MIG-enabled GPU is not itself usable"
    procs, outs = [], []
    try:
        for i in range(3):
            outs.append(tmp_path / f"replica{i}.txt")
            procs.append(
                run_functions(f'claim_gpu; echo "$CUDA_VISIBLE_DEVICES" >"{outs[i]}"; exec sleep 30', env)
            )
            wait_for_line(outs[i])
        assert sorted(o.read_text().strip() for o in outs) == sorted([*MIGS, GPUS[1]])
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_engine_folders_are_named_after_the_claimed_device(fake_bin: Path, tmp_path: Path) -> None:
    """Two replicas on two different GPUs build two folders, each named after its own device."""
    cache = tmp_path / "engine-cache"
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DIFFV2S_GPU_CLAIM_DIR": str(tmp_path / "claims"),
        "DIFFV2S_ENGINE": "tensorrt",
        "DIFFV2S_ENGINE_DIR": str(cache),
        "DIFFV2S_TEST_BUILD_LOG": str(tmp_path / "builds.log"),
    }
    script = 'claim_gpu; build_engines; echo "$CUDA_VISIBLE_DEVICES $DIFFV2S_ENGINE_DIR"; exec sleep 30'
    procs = [run_functions(script, env) for _ in GPUS]
    try:
        lines = [p.stdout.readline().split() for p in procs if p.stdout]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(device for device, _ in lines) == sorted(GPUS)
    for device, folder in lines:
        assert Path(folder).parent == cache and Path(folder).name.startswith(device + "_")
    assert len((tmp_path / "builds.log").read_text().split()) == 2


def test_a_claim_outside_a_shared_volume_is_reported(fake_bin: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "DIFFV2S_GPU_CLAIM_DIR": str(tmp_path / "claims")}
    proc = run_functions('claim_gpu; echo "$CUDA_VISIBLE_DEVICES"', env)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == GPUS[0]
    # tmp_path is not a mount point: the worker still starts, and says its claim is container-local.
    assert "not a mounted volume" in err


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
    assert built.name.startswith(GPUS[0] + "_")  # engines are keyed by the device the worker uses
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


def test_healthcheck_ignores_proxy_variables(metrics_server: tuple[str, type[_Metrics]]) -> None:
    """A proxy set for the application's outbound traffic must not swallow the local probe."""
    url, handler = metrics_server
    handler.body = b"diffv2s_model_live 1.0\n"
    dead_proxy = "http://127.0.0.1:9"  # nothing listens: a probe sent there fails
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env |= {"HTTP_PROXY": dead_proxy, "http_proxy": dead_proxy, "ALL_PROXY": dead_proxy}
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"{url}/metrics", "diffv2s_model_live"],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


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

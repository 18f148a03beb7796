"""Static checks of the deployment files: Prometheus config and rules (promtool), the compose files
(Debian's docker-compose), the Grafana provisioning and dashboard, Dockerfile.gpu and its entrypoint.

No Docker engine runs here: these tests validate the files with the real tools that parse them; the
live test (test_deploy_prometheus_live.py) runs the metrics side against real processes. A missing tool
is a failure, not a skip (deploy/apt-packages-deploy.txt lists what to install).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "diffv2s.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile.gpu"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
LOCK = DEPLOY / "docker" / "requirements-gpu.lock"
NODEPS_LOCK = DEPLOY / "docker" / "requirements-nodeps.lock"
UV_CONFIG = DEPLOY / "docker" / "uv.toml"
ALERTS = DEPLOY / "prometheus" / "rules" / "diffv2s-alerts.yml"
# The one CUDA major of the image: base image, torch, TensorRT and ONNX Runtime (README, Deploy).
CUDA_MAJOR = 13
# The TensorRT major diffv2s/engines/trt_backend.py is built and tested against (strongly typed networks
# also build on 11, but ONNX Runtime's TensorRT provider links TensorRT 10).
TENSORRT_MAJOR = 10


def shell_env_without_settings() -> dict[str, str]:
    """The environment of a fresh shell: no DIFFV2S_* or GRAFANA_* variable exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DIFFV2S_", "GRAFANA_"))}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install -y $(cat deploy/apt-packages-deploy.txt)")
    return path


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, env=full_env)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose model as docker-compose resolves and validates it (fails the test if invalid)."""
    args = [tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    proc = subprocess.run(
        [*args, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**shell_env_without_settings(), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def named_volume_mounts(model: dict[str, Any], service: str) -> list[tuple[str, str]]:
    """(volume name, container path) of the named volumes a resolved compose service mounts."""
    out = []
    for v in model["services"][service].get("volumes", []):
        if isinstance(v, str):  # docker-compose 1.x prints "source:target[:mode]"
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source", ""), v["target"]
        if source in model.get("volumes", {}):
            out.append((source, target))
    return out


# ---- Prometheus ------------------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    proc = run([tool("promtool"), "check", "config", str(PROM_CONFIG)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The config's rule_files glob must reach every rule file, or Prometheus would silently skip one.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in proc.stdout


def test_promtool_accepts_every_rule_file() -> None:
    assert len(RULE_FILES) >= 2
    proc = run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass_in_promtool() -> None:
    """Alert logic on synthetic series: each alert fires when it should and stays quiet when it should not."""
    proc = run([tool("promtool"), "test", "rules", str(Path(__file__).with_name("promtool_rules_test.yml"))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_rule_unit_test() -> None:
    alerts = {
        r["alert"] for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"] if "alert" in r
    }
    unit = load_yaml(Path(__file__).with_name("promtool_rules_test.yml"))
    tested = {a["alertname"] for t in unit["tests"] for a in t.get("alert_rule_test", [])}
    assert alerts - tested == set(), "alerts without a promtool unit test"


def test_workers_are_found_by_dns_service_discovery_on_their_metrics_port() -> None:
    jobs = {j["job_name"]: j for j in load_yaml(PROM_CONFIG)["scrape_configs"]}
    worker = jobs["worker"]
    assert "static_configs" not in worker, "scaled workers cannot be listed statically"
    (sd,) = worker["dns_sd_configs"]
    assert sd["type"] == "A" and sd["names"] == ["worker"]
    services = load_yaml(COMPOSE)["services"]
    assert "worker" in services
    assert str(sd["port"]) == services["worker"]["environment"]["DIFFV2S_METRICS_PORT"]
    # The worker's healthcheck reads the same port.
    assert f"127.0.0.1:{sd['port']}/metrics" in " ".join(services["worker"]["healthcheck"]["test"])
    (gateway_target,) = jobs["gateway"]["static_configs"][0]["targets"]
    assert gateway_target == f"gateway:{services['gateway']['environment']['DIFFV2S_PORT']}"


def test_recorded_series_used_anywhere_are_defined() -> None:
    recorded = {
        r["record"] for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"] if "record" in r
    }
    exprs = [r["expr"] for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"]]
    exprs += [
        t["expr"] for d in DASHBOARDS for p in panels(json.loads(d.read_text())) for t in p.get("targets", [])
    ]
    used = {name for e in exprs for name in re.findall(r"diffv2s:[a-z0-9_:]+", e)}
    assert used, "no recorded series used: the pattern is wrong"
    assert used - recorded == set()


# ---- Grafana ---------------------------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def provisioned_datasource() -> dict[str, Any]:
    (ds,) = load_yaml(DATASOURCES)["datasources"]
    return ds


def test_datasource_is_provisioned_with_a_pinned_uid_pointing_at_the_compose_prometheus() -> None:
    ds = provisioned_datasource()
    assert ds["type"] == "prometheus" and ds["uid"]
    services = load_yaml(COMPOSE)["services"]
    assert "prometheus" in services
    assert ds["url"] == "http://prometheus:9090"


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    mounts = load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_dashboards_load_and_use_only_the_provisioned_datasource() -> None:
    uid = provisioned_datasource()["uid"]
    assert DASHBOARDS
    for path in DASHBOARDS:
        text = path.read_text()
        assert "${DS_" not in text, f"{path.name}: an import placeholder is left"
        dash = json.loads(text)
        assert dash["uid"] and dash["title"]
        assert dash.get("__inputs") is None, "exported-for-sharing dashboards need an import step"
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        titles = [p["title"] for p in panels(dash) if p["type"] != "row"]
        assert len(titles) == len(set(titles)), "duplicate panel titles"
        queries = [p for p in panels(dash) if p["type"] != "row"]
        assert len(queries) >= 10
        for p in queries:
            assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t.get("datasource", p["datasource"]) == {"type": "prometheus", "uid": uid}, p["title"]
                assert t["expr"].strip(), p["title"]
        # The only variables are Grafana's built-in interval macros: no template variable to fill in.
        variables = {v for p in queries for t in p["targets"] for v in re.findall(r"\$\{?(\w+)", t["expr"])}
        assert variables <= {"__rate_interval", "__interval", "__range"}, variables


def test_dashboard_covers_what_operators_watch() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "diffv2s.json").read_text())
    exprs = " ".join(t["expr"] for p in panels(dash) for t in p.get("targets", []))
    for needed in [
        "diffv2s_jobs_submitted_total",  # throughput
        "diffv2s_jobs_finished_total",  # outcomes
        "diffv2s:queue_depth:max",
        "diffv2s:queue_wait_seconds:p50_5m",
        "diffv2s:queue_wait_seconds:p95_5m",
        "diffv2s:stage_seconds:p95_5m",
        "diffv2s_batch_size_bucket",
        "diffv2s:real_time_factor:p95_5m",
        "diffv2s_worker_up",
        "diffv2s_gpu_memory_bytes",
        "diffv2s_http_requests_total",
    ]:
        assert needed in exprs, needed


# ---- docker-compose --------------------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    model = compose_config(COMPOSE)
    services = model["services"]
    assert set(services) == {"redis", "gateway", "worker", "prometheus", "grafana"}
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_needs_no_variable_from_the_shell() -> None:
    """`${VAR:?}` makes every compose command (ps, logs, stop) fail in a shell that lacks VAR."""
    for path in (COMPOSE, COMPOSE_CPU):
        assert not re.search(r"\$\{[A-Za-z0-9_]+:?\?", path.read_text()), f"{path.name} requires a variable"
    compose_config(COMPOSE)  # resolves with no DIFFV2S_* / GRAFANA_* variable set


def test_secrets_are_files_mounted_as_compose_secrets_not_environment() -> None:
    model = compose_config(COMPOSE)
    services = model["services"]
    secrets = model["secrets"]
    for svc, variable, secret in (
        ("gateway", "DIFFV2S_API_KEYS_FILE", "diffv2s_api_keys"),
        ("grafana", "GF_SECURITY_ADMIN_PASSWORD__FILE", "grafana_admin_password"),
    ):
        env = services[svc]["environment"]
        assert env[variable] == f"/run/secrets/{secret}", svc
        mounted = [x if isinstance(x, str) else x["source"] for x in services[svc]["secrets"]]
        assert secret in mounted, svc
        assert Path(secrets[secret]["file"]).parent == DEPLOY / "secrets"
    # No key or password in any service's environment: `docker inspect` would show it.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"API_KEYS$|PASSWORD$|SECRET", key):
                assert value is None or str(value).startswith("/run/secrets/"), (name, key)
    # The secret files stay out of git and out of the image's build context.
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored and "!create" in ignored
    assert "deploy/secrets" in (ROOT / ".dockerignore").read_text().split()


def test_secrets_script_writes_each_file_once(tmp_path: Path) -> None:
    """Re-running it must never replace a key clients already use."""
    env = {"DIFFV2S_SECRETS_DIR": str(tmp_path / "secrets")}
    script = DEPLOY / "secrets" / "create"
    assert os.access(script, os.X_OK)
    first = run([tool("sh"), str(script)], env=env)
    assert first.returncode == 0, first.stderr
    keys = (tmp_path / "secrets" / "api_keys").read_text()
    assert len(keys.strip()) >= 24  # the gateway's minimum key length in prod
    assert run([tool("sh"), str(script)], env=env).returncode == 0
    assert (tmp_path / "secrets" / "api_keys").read_text() == keys
    assert (tmp_path / "secrets").stat().st_mode & 0o077 == 0


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, in either form docker-compose prints."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "0.0.0.0")), str(p.get("published", ""))))
            continue
        parts = str(p).split("/")[0].split(":")
        out.append((parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0]))
    return out


def test_only_the_gateway_is_published_beyond_loopback() -> None:
    """Prometheus (with /-/quit open) and Grafana listen on the host's loopback only."""
    services = compose_config(COMPOSE)["services"]
    assert [a for a, _ in published_ports(services["gateway"])] == ["0.0.0.0"]
    for name in ("prometheus", "grafana"):
        ports = published_ports(services[name])
        assert ports and all(addr == "127.0.0.1" for addr, _ in ports), (name, ports)
    for name in ("redis", "worker"):
        assert not published_ports(services[name]), name
    # Changing the port through its variable keeps the loopback binding.
    moved = compose_config(COMPOSE, env={"DIFFV2S_GRAFANA_PORT": "3300"})["services"]["grafana"]
    assert published_ports(moved) == [("127.0.0.1", "3300")]


def test_redis_is_bounded_in_memory_and_never_evicts_job_data() -> None:
    command = compose_config(COMPOSE)["services"]["redis"]["command"]
    assert re.fullmatch(r"\d+(gb|mb)", command[command.index("--maxmemory") + 1])
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_every_service_rotates_its_logs() -> None:
    for name, svc in compose_config(COMPOSE)["services"].items():
        logging = svc.get("logging", {})
        assert logging.get("driver") in ("json-file", "local"), name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name


def test_gpu_claims_are_shared_by_every_stack_on_the_host() -> None:
    """A second project (`-p other`) must claim from the same lock files, not a project-scoped copy."""
    for project in ("diffv2s", "other"):
        model = compose_config(COMPOSE, env={"COMPOSE_PROJECT_NAME": project})
        assert model["volumes"]["gpu-claims"]["name"] == "diffv2s-gpu-claims"
    assert ("gpu-claims", "/run/diffv2s-gpu") in named_volume_mounts(compose_config(COMPOSE), "worker")
    assert "DIFFV2S_GPU_CLAIM_DIR:-/run/diffv2s-gpu" in ENTRYPOINT.read_text()


def seconds(duration: str) -> int:
    """A Compose / Prometheus duration such as 1h30m, 30m or 75s, in seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    return int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60 + int(m.group(3) or 0)


def test_worker_not_ready_alert_waits_for_the_healthcheck_start_period() -> None:
    """Engines build during the start period; the alert must not page about a build Docker still allows."""
    start_period = compose_config(COMPOSE)["services"]["worker"]["healthcheck"]["start_period"]
    rules = {r.get("alert"): r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}
    assert seconds(rules["DiffV2SWorkerNotReady"]["for"]) >= seconds(start_period)


def test_worker_scales_and_reserves_a_gpu() -> None:
    worker = compose_config(COMPOSE)["services"]["worker"]
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    assert "container_name" not in worker
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_worker_stop_grace_period_outlasts_its_soft_shutdown() -> None:
    from worker.model import ModelRuntime

    worker = compose_config(COMPOSE)["services"]["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery's warm shutdown
    grace_s = seconds(worker["stop_grace_period"])
    # How long the worker lets its batch in flight finish on a warm shutdown: its setting where the worker
    # has one, else ModelRuntime.stop's default.
    from worker.settings import WorkerSettings

    grace_field = WorkerSettings.model_fields.get("shutdown_grace_s")
    if grace_field is not None:
        shutdown_s = grace_field.default
    else:
        shutdown_s = inspect.signature(ModelRuntime.stop).parameters["timeout"].default
    # Docker's SIGKILL must come after the worker had its whole soft shutdown, with a margin.
    assert shutdown_s + 5 <= grace_s <= shutdown_s + 60


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = compose_config(COMPOSE)["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    model = compose_config(COMPOSE)
    assert ("redis-data", "/data") in named_volume_mounts(model, "redis")


def test_gateway_and_workers_share_storage_and_workers_cache_engines() -> None:
    model = compose_config(COMPOSE)
    services = model["services"]

    def volume_at(svc: str, target: str) -> str | None:
        return dict((t, s) for s, t in named_volume_mounts(model, svc)).get(target)

    storage = services["gateway"]["environment"]["DIFFV2S_STORAGE_DIR"]
    assert services["worker"]["environment"]["DIFFV2S_STORAGE_DIR"] == storage
    assert volume_at("gateway", storage) is not None
    assert volume_at("gateway", storage) == volume_at("worker", storage)
    engine_dir = services["worker"]["environment"]["DIFFV2S_ENGINE_DIR"]
    assert volume_at("worker", engine_dir) is not None
    assert volume_at("worker", engine_dir) != volume_at("worker", storage)


def test_every_diffv2s_variable_in_compose_is_a_real_setting() -> None:
    """A misspelt DIFFV2S_* variable would be silently ignored by pydantic-settings (extra="ignore")."""
    from service.settings import Settings

    gateway_vars = {f"DIFFV2S_{name.upper()}" for name in Settings.model_fields}
    from worker.settings import WorkerSettings

    worker_vars = {f"DIFFV2S_{name.upper()}" for name in WorkerSettings.model_fields}
    # Read by deploy/docker/entrypoint.sh, not by the Python settings.
    entrypoint_vars = set(re.findall(r"\$\{?(DIFFV2S_[A-Z0-9_]+)", ENTRYPOINT.read_text()))
    services = compose_config(COMPOSE)["services"]
    for svc, known in (("gateway", gateway_vars), ("worker", worker_vars)):
        used = {k for k in services[svc]["environment"] if k.startswith("DIFFV2S_")}
        assert used - known - entrypoint_vars == set(), svc


class ResetTag:
    """Compose's `!reset` (v2.24.4+): drop the base file's value for this key."""


def _reset_loader() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: ResetTag())
    return Loader


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge rules for what the override uses: mappings merge, `!reset` removes the key."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, ResetTag):
                out.pop(key, None)
            else:
                out[key] = merge_compose(base.get(key), value) if key in base else value
        return out
    return override


def test_cpu_override_drops_the_gpu_reservation_and_stays_valid(tmp_path: Path) -> None:
    override = yaml.load(COMPOSE_CPU.read_text(), Loader=_reset_loader())  # noqa: S506 (SafeLoader subclass)
    assert isinstance(
        override["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"], ResetTag
    )
    # Debian's docker-compose 1.29 predates `!reset`: apply it here, then let docker-compose validate the
    # merged model exactly as `docker compose -f docker-compose.yml -f docker-compose.cpu.yml` sees it.
    merged = merge_compose(load_yaml(COMPOSE), override)
    merged_file = tmp_path / "docker-compose.merged.yml"
    merged_file.write_text(yaml.safe_dump(merged, sort_keys=False))
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")  # relative bind mounts must exist
    for name in ("Dockerfile.gpu", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    worker = compose_config(merged_file)["services"]["worker"]
    assert "devices" not in worker.get("deploy", {}).get("resources", {}).get("reservations", {})
    env = worker["environment"]
    assert env["DIFFV2S_DEVICE"] == "cpu"
    # A CPU engine by default (not TensorRT, and not the int8 denoiser, which misses verify's mel bound),
    # the operator's choice when set, exported at first start.
    assert env["DIFFV2S_ENGINE"] == "onnxruntime-cpu"
    assert env.get("DIFFV2S_BUILD_ENGINES", "1") == "1"
    assert int(env["DIFFV2S_TORCH_THREADS"]) >= 1  # replicas must not each take every core
    chosen = compose_config(merged_file, env={"DIFFV2S_ENGINE": "torch", "DIFFV2S_TORCH_THREADS": "3"})
    assert chosen["services"]["worker"]["environment"]["DIFFV2S_ENGINE"] == "torch"
    assert chosen["services"]["worker"]["environment"]["DIFFV2S_TORCH_THREADS"] == "3"
    # Everything else of the worker is kept from the base file.
    assert worker["healthcheck"]["test"] == load_yaml(COMPOSE)["services"]["worker"]["healthcheck"]["test"]
    assert worker["logging"] == load_yaml(COMPOSE)["services"]["worker"]["logging"]


def test_cpu_override_sets_only_real_worker_settings() -> None:
    from worker.settings import WorkerSettings

    known = {f"DIFFV2S_{name.upper()}" for name in WorkerSettings.model_fields}
    known |= set(re.findall(r"\$\{?(DIFFV2S_[A-Z0-9_]+)", ENTRYPOINT.read_text()))
    override = yaml.load(COMPOSE_CPU.read_text(), Loader=_reset_loader())  # noqa: S506 (SafeLoader subclass)
    assert set(override["services"]["worker"]["environment"]) - known == set()


# ---- Dockerfile.gpu and its entrypoint -------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_on_cuda_with_a_non_root_user_and_a_healthcheck() -> None:
    ins = dockerfile_instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "dependency and runtime stages"
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    # NVIDIA's `base` flavour: no cuDNN / cuBLAS in the image besides the wheels' copies, and
    # NVIDIA_REQUIRE_CUDA refuses a driver too old for this CUDA major.
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-base-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert m, args["CUDA_IMAGE"]
    assert int(m.group(1)) == CUDA_MAJOR
    assert all(f.startswith("${CUDA_IMAGE}") for f in froms)
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "HEALTHCHECK" for i, _ in ins)
    assert any(i == "ENTRYPOINT" and "diffv2s-entrypoint" in a for i, a in ins)


def test_dockerfile_installs_dependencies_from_the_lock_before_the_source() -> None:
    ins = dockerfile_instructions()
    runs = [(n, a) for n, (i, a) in enumerate(ins) if i == "RUN"]
    lock_installs = [n for n, a in runs if "--require-hashes" in a and "requirements-gpu.lock" in a]
    assert lock_installs, "dependencies come from the hashed lock"
    # Every pip install is either from a lock or of the source without dependencies: nothing resolves a
    # version range at build time.
    for _, a in runs:
        for cmd in re.findall(r"pip install[^&;]*", a):
            assert "--require-hashes" in cmd or "--no-deps" in cmd, cmd
            if "--require-hashes" not in cmd:
                assert "-r " not in cmd and "==" not in cmd, cmd
    source_copies = [
        n for n, (i, a) in enumerate(ins) if i == "COPY" and re.match(r"(diffv2s|service|worker)\b", a)
    ]
    assert source_copies and min(source_copies) > max(lock_installs), "source is copied after dependencies"
    source_install = [n for n, a in runs if "--no-deps" in a and "--require-hashes" not in a]
    assert source_install and source_install[-1] > max(source_copies)
    # Every package the image runs is copied in (jobs/ is shared by the gateway and the workers).
    copied = " ".join(a for i, a in ins if i == "COPY")
    for package in ("diffv2s", "jobs", "service", "worker", "model_export"):
        assert re.search(rf"(^|\s){package}\s", copied), package


def lock_pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a pip-compile style lock (`name==version \\` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^ ;\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_lock_is_complete_and_hashed() -> None:
    for path in (LOCK, NODEPS_LOCK):
        text = path.read_text()
        entries = re.findall(r"^[A-Za-z0-9][^ ]*==", text, flags=re.M)
        assert entries and len(
            re.findall(r"^[A-Za-z0-9][^\n]*\\\n\s+--hash=sha256:", text, flags=re.M)
        ) == len(entries), f"{path.name}: every pin carries hashes"
    # Everything pyproject asks for in the image ([service,gpu,landmarks] and the core) is in the lock.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("service", "gpu", "landmarks"):
        wanted += project["optional-dependencies"][extra]
    pins = lock_pins(LOCK)
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", w).group(0)).lower() for w in wanted}  # type: ignore[union-attr]
    assert names - set(pins) == set(), "pyproject changed: recompile the lock (requirements-gpu.in)"
    assert pins["torch"] == re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]


def test_lock_pins_one_cuda_major_and_the_tensorrt_major_of_the_code() -> None:
    pins = lock_pins(LOCK)
    major = lambda name: int(pins[name].split(".")[0])  # noqa: E731
    # torch's CUDA: its toolkit and runtime wheels; ONNX Runtime's [cuda,cudnn] extras share them.
    assert major("cuda-toolkit") == CUDA_MAJOR and major("nvidia-cuda-runtime") == CUDA_MAJOR
    assert f"nvidia-cudnn-cu{CUDA_MAJOR}" in pins
    # TensorRT for the same CUDA major, in the major the backend is written for.
    assert major(f"tensorrt-cu{CUDA_MAJOR}") == TENSORRT_MAJOR
    assert pins[f"tensorrt-cu{CUDA_MAJOR}-libs"] == pins[f"tensorrt-cu{CUDA_MAJOR}-bindings"]
    assert pins[f"tensorrt-cu{CUDA_MAJOR}-libs"] == pins[f"tensorrt-cu{CUDA_MAJOR}"]
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins, "the CPU build would shadow the GPU one"
    assert "nvidia-ml-py" in pins
    # Nothing built for another CUDA major: one set of CUDA libraries in the image.
    other = [n for n in pins if re.search(r"-cu(\d+)$", n) and not n.endswith(f"-cu{CUDA_MAJOR}")]
    other += [n for n in pins if re.search(r"-cu(\d+)-", n) and f"-cu{CUDA_MAJOR}-" not in n]
    assert other == [], other
    # pyproject's [gpu] extra allows exactly these majors, and the uv metadata for TensorRT's source
    # packages matches the locked version.
    gpu = " ".join(
        __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]["gpu"]
    )
    assert f"tensorrt-cu{CUDA_MAJOR}>={TENSORRT_MAJOR}" in gpu and f"<{TENSORRT_MAJOR + 1}" in gpu
    assert "onnxruntime-gpu" in gpu and "<2" in gpu
    uv_versions = set(re.findall(r'^version = "([^"]+)"', UV_CONFIG.read_text(), flags=re.M))
    assert uv_versions == {pins[f"tensorrt-cu{CUDA_MAJOR}"]}


def test_dockerfile_advertises_only_roles_the_entrypoint_has() -> None:
    roles = set(re.findall(r"^\s{8}([a-z]+)\)$", ENTRYPOINT.read_text(), flags=re.M))
    assert roles == {"gateway", "worker", "export"}
    (usage,) = re.findall(r"diffv2s:latest worker\s+# or: (.*)", DOCKERFILE.read_text())
    advertised = {part.split()[0] for part in usage.split("|")}
    assert advertised - roles == {"any"}, advertised  # "any command" runs as is


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [p for p in ignored if p and not p.startswith("#")]
    sources = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert "deploy/docker/entrypoint.sh" in sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not any(src == p or src.startswith(p.rstrip("/") + "/") for p in ignored), f"{src} is ignored"


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_entrypoint_parses(shell: str) -> None:
    proc = run([tool(shell), "-n", str(ENTRYPOINT)])
    assert proc.returncode == 0, proc.stderr
    assert os.access(ENTRYPOINT, os.X_OK)

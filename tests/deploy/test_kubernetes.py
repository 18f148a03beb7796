"""The Kubernetes manifests (deploy/kubernetes/), checked offline: every built-in object against the
Kubernetes API's OpenAPI schemas (kubernetes-validate bundles them), the KEDA ScaledObject against KEDA's
documented spec, and the queue lists, probes, ports and grace periods against what the code really uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from jobs.queue import queue_names
from service.settings import Settings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"

# KEDA's ScaledObject spec (https://keda.sh/docs/2.17/reference/scaledobject-spec/, the same in 2.14-2.22)
# and its Redis Lists scaler (https://keda.sh/docs/2.17/scalers/redis-lists/): every field we may set.
KEDA_SPEC_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
KEDA_SCALE_TARGET_FIELDS = {"apiVersion", "kind", "name", "envSourceContainerName"}
KEDA_ADVANCED_FIELDS = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
KEDA_HPA_CONFIG_FIELDS = {"name", "behavior"}
KEDA_SCALING_MODIFIERS_FIELDS = {"formula", "target", "activationTarget", "metricType"}
KEDA_TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
KEDA_REDIS_LIST_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def config() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "diffv2s-common")["data"]
    return data


def container(deployment: str) -> dict[str, Any]:
    c: dict[str, Any] = one("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    return c


def env(deployment: str) -> dict[str, str]:
    return {**config(), **{e["name"]: e["value"] for e in container(deployment).get("env", [])}}


def settings_of(values: dict[str, str], cls: type) -> Any:
    fields = {k.removeprefix("DIFFV2S_").lower(): v for k, v in values.items() if k.startswith("DIFFV2S_")}
    return cls(**fields)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_builtin_object_validates_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        pytest.skip("a KEDA custom resource: checked against KEDA's spec below")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_no_secret_is_inline() -> None:
    assert not [d for d in documents() if d["kind"] == "Secret"], "Secrets are created by the operator"
    for name in ("gateway", "worker"):
        refs = [e.get("secretRef", {}).get("name") for e in container(name)["envFrom"]]
        assert "diffv2s-s3" in refs
        assert not any("SECRET" in k or "PASSWORD" in k for k in env(name))
    volumes = one("Deployment", "gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "diffv2s-api-keys"} in [v.get("secret") for v in volumes]


def test_settings_parse_and_storage_is_the_bucket_with_pod_local_scratch() -> None:
    worker = settings_of(env("worker"), WorkerSettings)
    gateway_env = {k: v for k, v in env("gateway").items() if k != "DIFFV2S_API_KEYS_FILE"}
    gateway = settings_of({**gateway_env, "DIFFV2S_API_KEYS": "k" * 32}, Settings)
    for s, name in ((worker, "worker"), (gateway, "gateway")):
        assert s.storage_url.startswith("s3://")
        spec = one("Deployment", name)["spec"]["template"]["spec"]
        scratch = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == str(s.storage_dir)]
        assert scratch, f"{name}: DIFFV2S_STORAGE_DIR is mounted"
        vol = next(v for v in spec["volumes"] if v["name"] == scratch[0]["name"])
        assert "emptyDir" in vol, f"{name}: scratch is the pod's own (emptyDir), shared with nobody"
    assert not [d for d in documents() if d["kind"] == "PersistentVolumeClaim"], "no shared volume"


def test_scaledobject_fields_are_kedas_documented_spec() -> None:
    so = one("ScaledObject", "worker")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert set(spec) <= KEDA_SPEC_FIELDS
    assert set(spec["scaleTargetRef"]) <= KEDA_SCALE_TARGET_FIELDS
    assert spec["scaleTargetRef"]["name"] == "worker" and one("Deployment", "worker")
    assert set(spec["advanced"]) <= KEDA_ADVANCED_FIELDS
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= KEDA_HPA_CONFIG_FIELDS
    modifiers = spec["advanced"]["scalingModifiers"]
    assert set(modifiers) <= KEDA_SCALING_MODIFIERS_FIELDS and modifiers["metricType"] in (
        "AverageValue",
        "Value",
    )
    for trigger in spec["triggers"]:
        assert set(trigger) <= KEDA_TRIGGER_FIELDS and trigger["type"] == "redis"
        assert set(trigger["metadata"]) <= KEDA_REDIS_LIST_METADATA
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
            "KEDA metadata values are strings"
        )
    names = {t["name"] for t in spec["triggers"]}
    assert set(modifiers["formula"].replace("+", " ").split()) == names, "the formula sums every trigger"
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"], "0 -> N"
    assert spec["cooldownPeriod"] > 0


def test_keda_watches_the_brokers_real_queue_lists() -> None:
    worker = settings_of(env("worker"), WorkerSettings)
    broker = urlsplit(worker.broker_url)
    triggers = one("ScaledObject", "worker")["spec"]["triggers"]
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(queue_names(worker.queue_name))
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    for t in triggers:
        assert t["metadata"]["address"] == f"{broker.hostname}.{namespace}.svc.cluster.local:{broker.port}"
        assert t["metadata"]["databaseIndex"] == broker.path.strip("/")
    assert one("Service", broker.hostname)["spec"]["ports"][0]["port"] == broker.port


def test_scale_down_waits_out_a_taken_job() -> None:
    """A job leaves the list when a worker takes it: the cool-down lets it run to its time limit."""
    worker = settings_of(env("worker"), WorkerSettings)
    assert one("ScaledObject", "worker")["spec"]["cooldownPeriod"] >= worker.task_time_limit_s


def test_worker_probes_read_the_live_model_signal_on_the_metrics_port() -> None:
    from worker import metrics

    worker = settings_of(env("worker"), WorkerSettings)
    live = metrics.MODEL_LIVE._name  # the gauge the worker really exports
    c = container("worker")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd == ["diffv2s-healthcheck", f"http://127.0.0.1:{worker.metrics_port}/metrics", live], probe
    assert (ROOT / "deploy/docker/healthcheck.py").read_text().count("METRIC") >= 1
    annotations = one("Deployment", "worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(worker.metrics_port)
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60, "the first engine build"


def test_worker_gets_one_gpu_on_a_gpu_node_and_a_grace_longer_than_the_warm_shutdown() -> None:
    worker = settings_of(env("worker"), WorkerSettings)
    spec = one("Deployment", "worker")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]) and spec["nodeSelector"]
    assert env("worker")["DIFFV2S_CLAIM_GPU"] == "0", "the device plugin assigns the GPU"
    assert spec["terminationGracePeriodSeconds"] >= worker.shutdown_grace_s + 20
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert f"{spec['terminationGracePeriodSeconds']}s" == compose["services"]["worker"]["stop_grace_period"]
    assert one("PodDisruptionBudget", "worker")["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "worker"
    }


def test_gateway_probes_hpa_and_ready_without_workers() -> None:
    from service.api.routes.health import router

    paths = {getattr(r, "path", None) for r in router.routes}
    c = container("gateway")
    for probe in ("readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        # /healthz, not /readyz: /readyz needs a live worker, and workers scale to zero.
        assert path == "/healthz" and path in paths
    hpa = one("HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "gateway"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in c["resources"]["requests"], "CPU utilization needs a request"
    port = int(env("gateway")["DIFFV2S_PORT"])
    assert c["ports"][0]["containerPort"] == port
    ann = one("Deployment", "gateway")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(port) and ann["prometheus.io/path"] in paths


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    sts = one("StatefulSet", "redis")["spec"]
    args = sts["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "data"

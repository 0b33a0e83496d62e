"""The Kubernetes manifests: valid against the Kubernetes schemas, and consistent with the facade they run.

Validation is offline: kubernetes-validate (PyPI) ships the Kubernetes JSON schemas for every release it
supports, and strict mode rejects unknown fields, so a misspelt key fails here rather than in a cluster.
The ConfigMap's TOML is loaded by the facade's own loader, and a facade started with it answers the
Deployment's probes; its limits live in the Redis the manifests run, whose arguments Debian's redis-server
accepts.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import redis
import yaml

from capibara_facade.config import load_config
from tests import support
from tests.deploy.tools import DEPLOY, exec_form, image_env, instructions, redis_started_with

K8S = DEPLOY / "k8s"
# Needs the Prometheus Operator's CRD, so it is not among the manifests kustomization applies.
SERVICE_MONITOR = K8S / "monitoring" / "servicemonitor.yaml"
# The oldest Kubernetes release still in common use with autoscaling/v2 and policy/v1, and the newest known.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
LABEL = "app.kubernetes.io/name"
FACADE = "capibara-facade"


def manifests() -> dict[str, dict[str, Any]]:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                documents[f"{path.name}:{document['kind']}"] = document
    return documents


def resource(kind: str, app: str = FACADE) -> dict[str, Any]:
    """The one manifest of this kind for `app` (its app.kubernetes.io/name label): the facade's, or Redis's."""
    (found,) = [
        document
        for document in manifests().values()
        if document["kind"] == kind and document["metadata"]["labels"].get(LABEL) == app
    ]
    return found


def container(app: str = FACADE) -> dict[str, Any]:
    (only,) = resource("Deployment", app)["spec"]["template"]["spec"]["containers"]
    return only


def configmap_toml(tmp_path: Path) -> Path:
    (text,) = resource("ConfigMap")["data"].values()
    path = tmp_path / "capibara-facade.toml"
    path.write_text(text)
    return path


def pod_annotations() -> dict[str, str]:
    annotations: dict[str, str] = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    return annotations


def service_monitor() -> dict[str, Any]:
    monitor: dict[str, Any] = yaml.safe_load(SERVICE_MONITOR.read_text())
    return monitor


def pod_environment() -> dict[str, str]:
    """The facade's environment in the pod: the image's ENV, then the container's env."""
    return {**image_env(), **{item["name"]: item["value"] for item in container().get("env", [])}}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(manifests()))
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(name: str, version: str) -> None:
    try:
        kubernetes_validate.validate(manifests()[name], version, strict=True)
    except kubernetes_validate.utils.ValidationError as error:
        pytest.fail(f"{name} is invalid for Kubernetes {version}: {'.'.join(map(str, error.path))}: {error.message}")
    except kubernetes_validate.utils.SchemaNotFoundError as error:
        pytest.fail(error.message)


def test_kustomize_applies_every_manifest_in_the_directory() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert {document["metadata"].get("namespace", kustomization["namespace"]) for document in manifests().values()
            if document["kind"] != "Namespace"} == {kustomization["namespace"]}  # fmt: skip


def test_the_configmap_is_a_valid_facade_config_that_listens_on_the_container_port(tmp_path: Path) -> None:
    deployment = resource("Deployment")
    config_path = pod_environment()["CAPIBARA_CONFIG"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounted = volumes[mounts[str(Path(config_path).parent)]]
    assert mounted["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]
    assert Path(config_path).name in resource("ConfigMap")["data"]
    server = load_config(configmap_toml(tmp_path), pod_environment()).server
    assert server.host == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["http"] == server.port


@pytest.fixture
def facade_from_configmap(tmp_path: Path) -> Iterator[tuple[support.ServerProcess, support.ServerProcess]]:
    """A facade started with the ConfigMap's config and the pod's environment (on loopback, upstream: demo)."""
    upstream = support.demo_upstream(tmp_path)
    upstream.start()
    port = support.free_port()
    env = {
        **pod_environment(),
        "CAPIBARA_CONFIG": str(configmap_toml(tmp_path)),
        "CAPIBARA_HOST": "127.0.0.1",
        "CAPIBARA_PORT": str(port),
        "CAPIBARA_UPSTREAM_URL": upstream.url,
        "CAPIBARA__UPSTREAMS__DEFAULT__PROBE_INTERVAL_SECONDS": "0.2",  # notice the upstream going away sooner
    }
    (cmd,) = [arguments for keyword, arguments in instructions() if keyword == "CMD"]
    facade = support.ServerProcess(exec_form(cmd), port, tmp_path / "facade.log", env)
    try:
        with support.running(facade):
            yield facade, upstream
    finally:
        upstream.stop()


def test_a_pod_passes_its_probes_and_leaves_the_service_while_the_upstream_is_down(
    facade_from_configmap: tuple[support.ServerProcess, support.ServerProcess],
) -> None:
    facade, upstream = facade_from_configmap
    probes = {kind: container()[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    named_ports = {port["name"] for port in container()["ports"]}
    for probe in probes.values():
        assert probe["port"] in named_ports
        assert httpx.get(facade.url + probe["path"]).status_code == 200
    upstream.stop()
    # Readiness fails (the pod leaves the Service) while liveness still passes (no restart loop).
    ready = facade.url + probes["readinessProbe"]["path"]
    deadline = time.monotonic() + 30  # the facade re-probes its upstream every probe_interval_seconds
    while httpx.get(ready).status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(ready).status_code == 503
    assert httpx.get(facade.url + probes["livenessProbe"]["path"]).status_code == 200


def test_pods_are_annotated_for_prometheus_with_the_container_port_and_the_metrics_path(tmp_path: Path) -> None:
    annotations = pod_annotations()
    assert annotations["prometheus.io/scrape"] == "true"
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert load_config(configmap_toml(tmp_path), pod_environment()).metrics.enabled


def test_the_service_monitor_scrapes_the_facade_service_by_port_name_and_is_left_out_of_kustomization() -> None:
    monitor, service = service_monitor(), resource("Service")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == pod_annotations()["prometheus.io/path"]
    # Prometheus refuses a scrape timeout longer than the interval.
    assert float(endpoint["scrapeTimeout"].removesuffix("s")) <= float(endpoint["interval"].removesuffix("s"))
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not [path for path in kustomization["resources"] if "monitoring" in path]


def test_a_pod_serves_prometheus_metrics_where_its_annotations_and_service_monitor_point(
    facade_from_configmap: tuple[support.ServerProcess, support.ServerProcess],
) -> None:
    facade, _ = facade_from_configmap
    (endpoint,) = service_monitor()["spec"]["endpoints"]
    for path in {pod_annotations()["prometheus.io/path"], endpoint["path"]}:
        answer = httpx.get(facade.url + path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith("text/plain")
        assert "# TYPE capibara_requests_total counter" in answer.text


def test_pods_get_longer_to_stop_than_the_prestop_pause_plus_the_facades_grace(tmp_path: Path) -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    pause = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = load_config(configmap_toml(tmp_path), pod_environment()).server.shutdown_grace_seconds
    assert pod["terminationGracePeriodSeconds"] > float(pause[1]) + grace


def test_service_autoscaler_and_disruption_budget_all_point_at_the_facade_pods() -> None:
    deployment = resource("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service, budget, autoscaler = (
        resource("Service"),
        resource("PodDisruptionBudget"),
        resource("HorizontalPodAutoscaler"),
    )
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    named_ports = {port["name"] for port in container()["ports"]}
    assert all(port["targetPort"] in named_ports for port in service["spec"]["ports"])
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # A drain must be able to evict a pod: more replicas than the budget keeps, even at the autoscaler's floor.
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["minAvailable"]


def test_pods_run_as_the_images_unprivileged_user_with_a_read_only_root() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]["securityContext"]
    (user,) = [arguments for keyword, arguments in instructions() if keyword == "USER"]
    assert pod["runAsNonRoot"] is True
    assert str(pod["runAsUser"]) == user.split(":")[0]
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert "/tmp" in {mount["mountPath"] for mount in container()["volumeMounts"]}


def test_every_facade_pod_keeps_its_limits_in_the_redis_service_the_manifests_run(tmp_path: Path) -> None:
    redis_url = load_config(configmap_toml(tmp_path), pod_environment()).limits.redis_url
    assert redis_url is not None
    address = urlsplit(redis_url)
    service, deployment = resource("Service", "redis"), resource("Deployment", "redis")
    assert address.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert address.port == port["port"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert port["targetPort"] in {entry["name"] for entry in container("redis")["ports"]}
    # One Redis at a time: two during a rolling update would each hold part of the counts.
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]["type"]) == (1, "Recreate")


def test_only_facade_pods_may_connect_to_redis() -> None:
    policy = resource("NetworkPolicy", "redis")
    redis_pods = resource("Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_pods.items()
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    facade_pods = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= facade_pods.items()
    assert [entry["port"] for entry in rule["ports"]] == [port["name"] for port in container("redis")["ports"]]


def test_the_redis_containers_arguments_run_without_persistence_and_it_passes_its_probe(tmp_path: Path) -> None:
    redis_container = container("redis")
    with redis_started_with(redis_container["args"], tmp_path) as port, redis.Redis(port=port) as client:
        settings = {key: client.config_get(key)[key] for key in ("save", "appendonly", "maxmemory-policy")}
        assert settings == {"save": "", "appendonly": "no", "maxmemory-policy": "volatile-ttl"}
        assert int(client.config_get("maxmemory")["maxmemory"]) < _bytes(
            redis_container["resources"]["limits"]["memory"]
        )
        cli, *command = redis_container["readinessProbe"]["exec"]["command"]
        result = subprocess.run([cli, "-p", str(port), *command], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0 and result.stdout.strip() == "PONG", result


def test_redis_runs_as_the_images_unprivileged_user_with_a_read_only_root() -> None:
    pod = resource("Deployment", "redis")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    security = container("redis")["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in the binary units the manifests use (Mi, Gi)."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)

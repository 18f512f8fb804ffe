"""Feast as the feature store (service/features/feast_store.py), against a real local Feast: the
example repository (examples/feast/) with its file offline store and local registry, and this
machine's Redis as the online store. Feast pins pandas<3 and prometheus-client<0.25, so it has its
own environment (.venv-feast, made by scripts/setup-feast.sh, which scripts/test.sh runs); these
tests run ranker-load-features and ranker-serve from there."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from service.features.feast_store import FeastSetupError, with_client_limits
from service.settings import Settings
from tests.conftest import REDIS_DB, served_process

ROOT = Path(__file__).resolve().parents[1]
FEAST_PYTHON = ROOT / ".venv-feast" / "bin" / "python"


@pytest.fixture(scope="module")
def feast_python() -> Path:
    if not FEAST_PYTHON.exists():
        message = f"{FEAST_PYTHON} not found: bash scripts/setup-feast.sh makes it (scripts/test.sh does)"
        if os.environ.get("RANKER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return FEAST_PYTHON


def feast_repo(tmp_path: Path, host_port: str, db: int) -> tuple[Path, dict]:
    """A copy of the example repository under a project name of its own (Feast's Redis keys end with
    it), and the environment that points its online store at `host_port`, db `db`."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "examples" / "feast", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    project = f"test_{uuid.uuid4().hex[:8]}"
    yaml = repo / "feature_store.yaml"
    yaml.write_text(re.sub(r"(?m)^project: .*$", f"project: {project}", yaml.read_text()))
    return repo, {"FEAST_REDIS_CONNECTION": f"{host_port},db={db}", "FEAST_PROJECT": project}


def load_features(python: Path, repo: Path, features: Path, env: dict) -> subprocess.CompletedProcess:
    command = [str(python), "-m", "service.features.loader", "--feast", str(repo), "--features", str(features)]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


@pytest.fixture
def shared_redis_repo(tmp_path):
    """The example repository on the shared Redis (db 13); its keys are deleted afterwards."""
    repo, env = feast_repo(tmp_path, "127.0.0.1:6379", REDIS_DB)
    yield repo, env
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"*{env['FEAST_PROJECT']}", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def serving_env(repo: Path, env: dict, **more) -> dict:
    return {"RANKER_FEATURE_STORE": "feast", "RANKER_FEAST_REPO": str(repo), **env, **more}


def metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def rank_body(trained, n_known: int = 40) -> dict:
    known = list(trained.log.videos.index[:n_known])
    # No video_len in the request: it, like every item feature, comes from the store.
    return {"user": {"id": "u7"}, "context": {"network": "wifi", "hour": 20},
            "candidates": [{"id": vid} for vid in known] + [{"id": "never-seen"}]}  # fmt: skip


def test_features_materialised_into_feast_rank_exactly_like_the_built_in_store(feast_python, shared_redis_repo,
                                                                              trained, repo):  # fmt: skip
    feature_repo, env = shared_redis_repo
    loaded = load_features(feast_python, feature_repo, trained.features_dir, env)
    assert loaded.returncode == 0, loaded.stderr
    assert "{'user': 300, 'item': 400}" in loaded.stderr
    assert (feature_repo / "data" / "items.parquet").is_file() and (feature_repo / "data" / "registry.db").is_file()

    body = rank_body(trained)
    with served_process(repo, {"RANKER_FEATURES_DIR": str(trained.features_dir)}) as embedded:
        expected = httpx.post(f"{embedded.url}/v1/rank", json=body, timeout=30).json()
    with served_process(repo, serving_env(feature_repo, env), python=feast_python) as server:
        got = httpx.post(f"{server.url}/v1/rank", json=body, timeout=30)
        metrics = httpx.get(f"{server.url}/metrics", follow_redirects=True).text
    assert got.status_code == 200, got.text
    assert got.json()["items"] == expected["items"]  # the same features, so the same scores and order
    assert metric(metrics, "ranker_feature_store_misses_total", store="feast") == 1  # "never-seen"
    assert metric(metrics, "ranker_degraded_requests_total", reason="feature_store") == 0


def test_a_slow_or_stopped_online_store_serves_defaults_counted_and_fast(feast_python, own_redis, tmp_path,
                                                                        trained, repo):  # fmt: skip
    feature_repo, env = feast_repo(tmp_path, f"127.0.0.1:{own_redis.port}", 0)
    assert load_features(feast_python, feature_repo, trained.features_dir, env).returncode == 0
    body = rank_body(trained)
    with served_process(repo, serving_env(feature_repo, env, RANKER_REDIS_TIMEOUT_MS="50"),
                        python=feast_python) as server:  # fmt: skip
        with httpx.Client(base_url=server.url, timeout=30) as client:
            healthy = client.post("/v1/rank", json=body).json()["items"]
            # DEBUG SLEEP blocks the server: the fetch must give up after one 50 ms timeout (redis-py
            # would otherwise retry three times with back-off).
            sleeper = subprocess.Popen(["redis-cli", "-p", str(own_redis.port), "DEBUG", "SLEEP", "2"])
            time.sleep(0.2)
            started = time.monotonic()
            degraded = client.post("/v1/rank", json=body)
            took = time.monotonic() - started
            sleeper.wait(timeout=10)
            assert degraded.status_code == 200 and took < 1.0, (degraded.status_code, took)
            assert degraded.json()["items"] != healthy  # every feature at its default
            own_redis.stop()
            time.sleep(1.1)  # past the back-off: the next request tries the store again
            for _ in range(3):
                assert client.post("/v1/rank", json=body).status_code == 200
            metrics = client.get("/metrics", follow_redirects=True).text
    assert metric(metrics, "ranker_degraded_requests_total", reason="feature_store") == 4


def start(python: Path, models: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "service.cli", "--models", str(models), "--port", "0"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_service_refuses_to_start_on_a_repository_it_cannot_read_and_says_why(feast_python, tmp_path, repo):
    started = start(feast_python, repo, serving_env(tmp_path, {}))
    assert started.returncode == 1
    assert f"RANKER_FEATURE_STORE=feast: {tmp_path}: no feature_store.yaml there" in started.stderr
    # A repository never applied (`ranker-load-features --feast` applies it) has no views registered.
    feature_repo, env = feast_repo(tmp_path, "127.0.0.1:6379", REDIS_DB)
    started = start(feast_python, repo, serving_env(feature_repo, env))
    assert started.returncode == 1
    assert "feature view 'user_features' is not in the repository's registry" in started.stderr
    started = start(feast_python, repo, serving_env(feature_repo, {}))
    assert started.returncode == 1 and "names an environment variable that is not set" in started.stderr


def test_feast_settings_and_the_missing_package_are_named():
    with pytest.raises(ValueError, match="RANKER_FEAST_REPO"):
        Settings(feature_store="feast")
    if importlib.util.find_spec("feast") is None:  # the main environment has no feast: say how to get it
        from service.features.feast_store import FeastStore

        with pytest.raises(FeastSetupError, match=r"pip install 'ple-ranker\[cpu,feast\]'"):
            FeastStore(Path("examples/feast"), "user_features", "item_features", 0.05)


def test_the_redis_client_gets_the_services_timeout_and_no_retries_unless_the_repository_says():
    assert with_client_limits("redis:6379,db=2", 0.05) == \
        "redis:6379,db=2,socket_timeout=0.05,socket_connect_timeout=0.05,retry=null"  # fmt: skip
    assert with_client_limits("redis:6379,socket_timeout=1", 0.05) == \
        "redis:6379,socket_timeout=1,socket_connect_timeout=0.05,retry=null"  # fmt: skip

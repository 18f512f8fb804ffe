"""Shared fixtures: one small trained and exported model per test session."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import free_port, served
from training.data import Dataset, data_root, videolog
from training.data.files import FULL_FILES
from training.data.stream import write_parquet
from training.export import write_version
from training.models.ple import PLEConfig
from training.train import TrainConfig, TrainResult, run_training


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked full_data run where the full data files are (data_root: $RANKER_DATA_DIR, else
    <repo>/../shared/data) and skip, saying why, where any is missing; the rest use datasets/samples/."""
    if item.get_closest_marker("full_data") is None:
        return
    root = data_root()
    missing = [f.path for f in FULL_FILES if "LICENSE" not in f.path and not (root / f.path).is_file()]
    if missing:
        pytest.skip(f"full data files absent from {root} ({', '.join(missing)}): fetch them with "
                    f"`bash scripts/fetch-data.sh` or set RANKER_DATA_DIR (docs/data.md)")  # fmt: skip


SMALL_PLE = PLEConfig(n_levels=2, n_task_experts=2, n_shared_experts=2, expert_hidden=(32, 16), tower_hidden=(8,))


@dataclass
class Trained:
    result: TrainResult
    log: videolog.VideoLog
    models_dir: Path
    features_dir: Path
    version_dir: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("repo")
    log = videolog.simulate(videolog.VideoLogConfig(n_users=300, n_videos=400, n_impressions=6000, seed=3))
    features_dir = root / "features"
    videolog.write_feature_tables(log, features_dir)
    result = run_training(videolog.to_dataset(log), "ple", TrainConfig(epochs=1, batch_size=512),
                          model_config=SMALL_PLE, log=lambda _: None)  # fmt: skip
    version_dir = write_version(result, root / "models", "ple")
    return Trained(result, log, root / "models", features_dir, version_dir)


@pytest.fixture(scope="session")
def parquet_log(tmp_path_factory) -> tuple[Dataset, Path]:
    """A small simulated log and the same rows as a Parquet file in the streaming layout."""
    data = videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=80, n_videos=120, n_impressions=5000, seed=2)))
    path = tmp_path_factory.mktemp("stream") / "log.parquet"
    write_parquet(data, path, row_group_rows=900)
    return data, path


def stream_args(path: Path) -> list[str]:
    """ranker-train's arguments for a short CGC run streamed from `path` in chunks of 1000 rows."""
    return ["--data", "parquet", "--set", f'data.parquet.path="{path}"', "--set", "data.parquet.chunk_rows=1000",
            "--model", "cgc", "--epochs", "1", "--set", "model.expert_hidden=[8]"]  # fmt: skip


def need_tool(command: str, package: str, how: str | None = None) -> str:
    """The path of a command a test needs, on PATH or beside this Python (a tool pip installed into
    the venv). Missing: a skip on a developer's machine, a failure in CI (.ci/run installs it and
    sets RANKER_REQUIRE_TOOLS=1), so CI never skips silently. `how` replaces the Debian hint."""
    path = shutil.which(command) or shutil.which(command, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{command} not found: {how or f'install the Debian package {package}'} (.ci/run does)"
        if os.environ.get("RANKER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def ranker_variables(text: str) -> tuple[set[str], set[str]]:
    """The RANKER_* names in a deployment file's text, and those of them that are no setting
    (service.settings.Settings reads RANKER_<FIELD>): one check for compose, Dockerfile and Kubernetes."""
    from service.settings import Settings

    used = set(re.findall(r"\bRANKER_[A-Z0-9_]*[A-Z0-9]\b", text))
    return used, used - {f"RANKER_{name.upper()}" for name in Settings.model_fields}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- Redis: the real server, a db and key prefix of our own ----

REDIS_DB = 13


@pytest.fixture
def redis_prefix():
    """A fresh key prefix on db 13 of the shared Redis; every key under it is deleted afterwards."""
    import uuid

    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not answering at 127.0.0.1:6379 (scripts/test.sh starts it)")
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


class OwnRedis:
    """A private redis-server on a free port, which a test may stop, slow down and restart."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process = None

    def start(self):

        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis():
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.stop()


# ---- a real uvicorn server in a thread, for tests that need concurrency ----


@contextlib.contextmanager
def live_server(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# ---- a real ranker-serve process ----

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def serve_process(models: Path, env: dict | None = None, timeout: float = 60):
    """Run `ranker-serve --models DIR` on a free port until the block ends; yields its URL."""
    with served_process(models, env, timeout) as server:
        yield server.url


def served_process(models: Path, env: dict | None = None, timeout: float = 60, log_path: Path | None = None,
                   python: str | Path = sys.executable):  # fmt: skip
    """bench.common.served, the one launcher of tests and benchmarks, without the embedded feature
    tables unless the test names them. Yields Served(url, proc); must exit 0 on SIGTERM."""
    return served(models, {"RANKER_FEATURES_DIR": "", **(env or {})}, timeout, log_path, python=python)


# ---- a model repository with two versions of different weights ----


@pytest.fixture(scope="session")
def retrained(trained):
    """The same model family trained with another seed: different outputs for the same request."""
    return run_training(videolog.to_dataset(trained.log), "ple", TrainConfig(epochs=1, batch_size=512, seed=1),
                        model_config=SMALL_PLE, log=lambda _: None)  # fmt: skip


@pytest.fixture
def repo(tmp_path, trained, retrained):
    models = tmp_path / "models"
    (models / "ple").mkdir(parents=True)
    shutil.copytree(trained.version_dir, models / "ple" / "1")
    assert write_version(retrained, models, "ple").name == "2"
    return models


def copy_version(models: Path, source: int, target: int, name: str = "ple", **spec_changes) -> Path:
    """A new version folder holding the same model.onnx, its model.json renumbered (and changed)."""
    import json

    src, dst = models / name / str(source), models / name / str(target)
    shutil.copytree(src, dst)
    spec = json.loads((dst / "model.json").read_text())
    spec.update(version=target, **spec_changes)
    (dst / "model.json").write_text(json.dumps(spec))
    return dst


def other_interface_version(models: Path, source: int, target: int, name: str = "ple") -> Path:
    """A version that loads (same model.onnx) but serves another interface: task vtr is called income,
    as if another data set's model had been written under this name (issue 16)."""
    import json

    spec = json.loads((models / name / str(source) / "model.json").read_text())
    tasks = [{**t, "name": "income"} if t["name"] == "vtr" else t for t in spec["tasks"]]
    weights = {("income" if k == "vtr" else k): w for k, w in spec["scoring"]["weights"].items()}
    return copy_version(models, source, target, name, tasks=tasks, scoring={**spec["scoring"], "weights": weights})

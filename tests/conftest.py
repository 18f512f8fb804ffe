"""Shared fixtures: one small trained and exported model per test session."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.data import videolog
from training.export import write_version
from training.models.ple import PLEConfig
from training.train import TrainConfig, TrainResult, run_training

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_tool(command: str, package: str) -> str:
    """The path of a command a test needs. Missing: a skip on a developer's machine, a failure in CI
    (.ci/run installs the Debian package and sets RANKER_REQUIRE_TOOLS=1), so CI never skips silently."""
    path = shutil.which(command)
    if path is None:
        message = f"{command} not found: install the Debian package {package} (.ci/run does)"
        if os.environ.get("RANKER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


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

"""Shared fixtures: one small trained and exported model per test session."""

from __future__ import annotations

import socket
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

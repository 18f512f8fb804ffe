"""The quick start's path with real processes: ranker-train, then ranker-serve, then HTTP."""

import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from contract.modelspec import ModelSpec
from tests.conftest import BIN, serve_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_then_serve_answers_a_100_candidate_request(tmp_path):
    models, features = tmp_path / "models", tmp_path / "features"
    train = subprocess.run(
        [BIN / "ranker-train", "--data", "videolog", "--model", "ple", "--out", models, "--epochs", "1",
         "--impressions", "8000", "--features-out", features],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert train.stdout.strip().splitlines()[-1] == str(models / "ple" / "1")
    assert "auc=" in train.stderr and "mse=" in train.stderr

    with serve_process(models, {"RANKER_FEATURES_DIR": str(features)}) as url:
        body = {"user": {"id": "u3"}, "context": {"hour": 20}, "candidates": [{"id": f"v{i}"} for i in range(100)]}
        r = httpx.post(f"{url}/v1/rank", json=body, timeout=10)
        assert r.status_code == 200, r.text
        scores = [item["score"] for item in r.json()["items"]]
        assert len(scores) == 100 and scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_the_quickstarts_training_is_demo_sized_and_serves(tmp_path):
    """scripts/quickstart.sh's own ranker-train line: one thread and 50,000 impressions, so it takes
    under a minute on a loaded 2-core machine (the defaults took 8.5 minutes there; issue 16)."""
    line = next(line.strip() for line in (ROOT / "scripts" / "quickstart.sh").read_text().splitlines()
                if line.strip().startswith("ranker-train "))  # fmt: skip
    args = shlex.split(line)[1:]
    assert args[args.index("--threads") + 1] == "1"
    models, features = tmp_path / "models", tmp_path / "features"
    args[args.index("--out") + 1] = str(models)
    train = subprocess.run([BIN / "ranker-train", *args, "--features-out", features], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert train.returncode == 0, train.stderr
    spec = ModelSpec.model_validate_json((models / "ple" / "1" / "model.json").read_text())
    assert spec.training_data.rows["total"] <= 50_000
    with serve_process(models, {"RANKER_FEATURES_DIR": str(features)}) as url:
        r = httpx.post(f"{url}/v1/rank", content=(ROOT / "examples" / "rank-request.json").read_bytes(),
                       headers={"content-type": "application/json"}, timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text

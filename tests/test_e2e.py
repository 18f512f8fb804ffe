"""The quick start's path with real processes: ranker-train, then ranker-serve, then HTTP."""

import subprocess

import httpx
import pytest

from tests.conftest import BIN, serve_process


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

"""The quick start's path with real processes: ranker-train, then ranker-serve, then HTTP."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

BIN = Path(sys.executable).parent


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

    port = free_port()
    env = {**os.environ, "RANKER_FEATURES_DIR": str(features)}
    server = subprocess.Popen([BIN / "ranker-serve", "--models", models, "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("ranker-serve did not become ready in 60 s")
        body = {"user": {"id": "u3"}, "context": {"hour": 20}, "candidates": [{"id": f"v{i}"} for i in range(100)]}
        r = httpx.post(f"{url}/v1/rank", json=body, timeout=10)
        assert r.status_code == 200, r.text
        scores = [item["score"] for item in r.json()["items"]]
        assert len(scores) == 100 and scores == sorted(scores, reverse=True)
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0

"""The benchmark's peers rank exactly as the service does (same weights, transform and formula),
so compare_servers.py compares serving stacks, not different answers. No timing here."""

from __future__ import annotations

import time

import torch
from fastapi.testclient import TestClient

from bench.peers.core import RankingCore
from bench.peers.torch_model import export_state, load_model
from service.app import create_app
from service.schemas import RankRequest
from service.settings import Settings


def test_torch_peer_ranks_like_the_service(trained, tmp_path):
    state = tmp_path / "state.pt"
    assert export_state(trained.version_dir, state) < 1e-5
    core = RankingCore(trained.version_dir, trained.features_dir)
    model = load_model(trained.version_dir, state)
    ids = list(trained.log.videos.index[:30]) + ["not-in-the-store"]
    request = {"user": {"id": str(trained.log.users.index[0])}, "context": {"network": "wifi", "hour": 21},
               "candidates": [{"id": str(i), "video_len": 10.0 + j} for j, i in enumerate(ids)],
               "weights": {"shr": 0.5}}  # fmt: skip

    inputs, lengths = core.inputs(RankRequest.model_validate(request))
    with torch.inference_mode():
        outputs = model(torch.from_numpy(inputs["sparse_ids"]), torch.from_numpy(inputs["dense"]))
    peer = core.ranked(RankRequest.model_validate(request), [o.numpy() for o in outputs], lengths)

    settings = Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, watch="off")
    with TestClient(create_app(settings)) as client:
        ours = client.post("/v1/rank", json=request).json()["items"]
    assert [i["id"] for i in peer] == [i["id"] for i in ours]
    for a, b in zip(peer, ours):
        assert abs(a["score"] - b["score"]) <= 1e-5 * b["score"]


def test_the_fastapi_ort_peer_answers_like_the_service(trained, monkeypatch):
    """compare_servers' plain two-process server runs the same model and features: its answer over
    HTTP (its own app, its pydantic models) ranks as ours does."""
    import importlib
    import sys

    monkeypatch.setenv("PEER_MODEL", str(trained.version_dir))
    monkeypatch.setenv("PEER_FEATURES", str(trained.features_dir))
    sys.modules.pop("bench.peers.fastapi_ort", None)
    peer_app = importlib.import_module("bench.peers.fastapi_ort").app
    ids = [str(i) for i in trained.log.videos.index[:40]]
    request = {"user": {"id": str(trained.log.users.index[1])}, "candidates": [{"id": i} for i in ids], "top_k": 10}
    with TestClient(peer_app) as client:
        peer = client.post("/v1/rank", json=request).json()["items"]
        assert client.post("/v1/rank", json={"user": {}}).status_code == 422
    settings = Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, watch="off")
    with TestClient(create_app(settings)) as client:
        ours = client.post("/v1/rank", json=request).json()["items"]
    assert [i["id"] for i in peer] == [i["id"] for i in ours] and len(ours) == 10
    for a, b in zip(peer, ours):
        assert abs(a["score"] - b["score"]) <= 1e-5 * b["score"]


def test_server_cpu_counts_workers_in_their_own_session():
    """compare_servers' CPU per request must see a server's worker processes, even ones that start
    a session of their own (BentoML's did, and the first run read 0 CPU for it)."""
    import subprocess
    import sys

    from bench.compare_servers import tree_cpu_seconds

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    spawn = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {burn!r}], start_new_session=True)\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_seconds(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tree_cpu_seconds(parent.pid) >= 0.5  # the grandchild's burnt half second is counted
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)])
        parent.kill()
        parent.wait()


def test_alternated_timing_drops_warm_up_blocks_and_keeps_each_result():
    from bench.common import alternated

    calls: list[str] = []

    def first():
        calls.append("a")
        return len(calls)

    def second():
        calls.append("b")
        time.sleep(0.002)
        return "b"

    a, b = alternated(first, second, repeat=25, block=5, warmup_blocks=2)
    # 2 warm-up blocks + ceil(25 / 5) kept blocks of each, in alternation: aaaaa bbbbb aaaaa ...
    assert "".join(calls) == ("a" * 5 + "b" * 5) * 7
    assert len(a) == len(b) == 25
    assert [result for _, result in a][:5] == [21, 22, 23, 24, 25]  # the third block of "a" is the first kept
    assert all(result == "b" and seconds >= 0.002 for seconds, result in b)

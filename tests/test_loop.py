"""The production loop end to end at a small size: serve, log, feedback, retrain, shadow, activate."""

import json

import pytest
import redis

from tests.conftest import REDIS_URL
from training import loop

REQUESTS, SHOWN = 120, 10


@pytest.mark.slow
def test_the_loop_retrains_from_what_was_served_shadows_the_new_version_and_switches_to_it(tmp_path, capsys):
    before = set(redis.Redis.from_url(REDIS_URL).scan_iter(match="loop-*"))
    assert loop.main(["--workdir", str(tmp_path), "--redis-url", REDIS_URL, "--history", "3000", "--users", "200",
                      "--videos", "300", "--requests", str(REQUESTS), "--shadow-requests", "40", "--shown", str(SHOWN),
                      "--epochs", "1", "--quick", "--quiet-training"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert [line[3:5] for line in out.splitlines() if line.startswith("== ")] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    summary = json.loads((tmp_path / "loop.json").read_text())
    assert summary["served_by_version_1"]["versions"] == {"1": REQUESTS}
    joined = summary["join"]
    assert joined["impressions"] == REQUESTS * SHOWN  # only what the answers showed (top_k of 50 candidates)
    assert joined["joined"] == summary["served_by_version_1"]["events"] and joined["unknown_request"] == 0
    assert (tmp_path / "models" / "ple" / "2" / "model.onnx").exists()
    shadow = summary["shadow"]
    assert (shadow["serving"], shadow["shadow"]) == (1, 2) and shadow["compared_per_s"] > 0
    assert 0 <= shadow["top10_overlap"] <= 1 and -1 <= shadow["rank_correlation"] <= 1
    assert summary["served_by_version_2"]["versions"] == {"2": 40}
    held_out = summary["held_out"]
    assert held_out["rows"] > 0 and set(held_out["version_2"]) == set(held_out["version_1_served"]) == {
        "ctr", "vtr", "vcr", "shr", "cmr"}
    assert set(redis.Redis.from_url(REDIS_URL).scan_iter(match="loop-*")) == before  # its keys are gone

"""The CI variant of bench/swap_under_load.py: a few swaps under a small fixed request rate.

The long run (~80 % of measured capacity, 100 swaps) is the same script with other flags; its
figures are in bench/results/swap_under_load_80pct.json (docs/reliability.md).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_swaps_under_paced_load_lose_no_request_and_leak_nothing(trained, tmp_path):
    out = tmp_path / "swap.json"
    command = [sys.executable, str(ROOT_DIR / "bench" / "swap_under_load.py"), "--models", str(trained.models_dir),
               "--swaps", "6", "--steady", "2", "--concurrency", "2", "--rate", "20", "--swap-every", "0.3",
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    steady, swapping = result["phases"]["steady"], result["phases"]["swapping"]
    assert steady["failed"] == 0 and swapping["failed"] == 0
    assert steady["n"] >= 20 and swapping["n"] >= 20  # traffic did flow through both phases
    assert swapping["versions_seen"] >= 3  # requests were answered by several of the swapped-in versions
    assert result["achieved_rps_swapping"] < 20 * 1.2  # paced, not flat out
    assert result["server_after"]["open_fds"] - result["server_before"]["open_fds"] <= 4
    assert result["rss_growth_mb"] < 50

"""The CI variant of bench/swap_under_load.py: a few swaps under a small fixed request rate; and
the keep-alive race that once cost it a request (docs/reliability.md, "Keep-alive").

The long run (~80 % of measured capacity, 100 swaps) is the same script with other flags; its
figures are in bench/results/swap_under_load_80pct.json (docs/reliability.md).
"""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import served_process

ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_swaps_under_paced_load_lose_no_request_and_leak_nothing(trained, tmp_path):
    out = tmp_path / "swap.json"
    command = [sys.executable, "-m", "bench.swap_under_load", "--models", str(trained.models_dir),
               "--swaps", "6", "--steady", "2", "--concurrency", "2", "--rate", "20", "--swap-every", "0.3",
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT_DIR)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    steady, swapping = result["phases"]["steady"], result["phases"]["swapping"]
    assert steady["failed"] == 0 and swapping["failed"] == 0
    # A retry (a request resent on a reused connection the server had closed) would be the
    # keep-alive race below: the server must not close connections its clients still reuse.
    assert steady["retried"] == 0 and swapping["retried"] == 0
    assert steady["n"] >= 20 and swapping["n"] >= 20  # traffic did flow through both phases
    assert swapping["versions_seen"] >= 3  # requests were answered by several of the swapped-in versions
    assert result["achieved_rps_swapping"] < 20 * 1.2  # paced, not flat out
    assert result["server_after"]["open_fds"] - result["server_before"]["open_fds"] <= 4
    assert result["rss_growth_mb"] < 50


@pytest.mark.slow
def test_a_connection_reused_within_the_clients_keepalive_expiry_is_answered_after_a_stall(trained):
    """The race that failed 1 swap run in 10: httpx reuses an idle connection for up to 5 s
    (keepalive_expiry); uvicorn closed idle ones after 5 s (timeout_keep_alive's default). A request
    sent just before the server's deadline while the server is not running its event loop (an
    unload's gc.collect() holds the GIL for 0.1-0.2 s) was dropped: when the loop ran again, uvloop
    fired the due keep-alive timer before reading the socket, closed the connection with the request
    unread, and the client got a reset (httpx.ReadError) with no answer. Here the stall is forced
    with SIGSTOP, from before the old deadline until after it."""
    expiry = httpx.Limits().keepalive_expiry  # 5 s, httpx's default
    reused = True

    def trace(event: str, info: dict) -> None:
        nonlocal reused
        if event == "connection.connect_tcp.started":
            reused = False

    with served_process(trained.models_dir, {"RANKER_WATCH": "off"}) as served, \
            httpx.Client(base_url=served.url, timeout=30) as client:  # fmt: skip
        body = {"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}]}
        assert client.post("/v1/rank", json=body).status_code == 200
        answered = time.monotonic()
        time.sleep(expiry - 1.5)
        served.proc.send_signal(signal.SIGSTOP)  # stalled before the old 5 s deadline ...
        resume = threading.Timer(answered + expiry + 1.0 - time.monotonic(), served.proc.send_signal, (signal.SIGCONT,))
        resume.start()  # ... until after it
        try:
            assert time.monotonic() - answered < expiry - 0.5, "the test itself stalled; the race was not set up"
            response = client.post("/v1/rank", json=body, extensions={"trace": trace})
        finally:
            resume.join()
            served.proc.send_signal(signal.SIGCONT)
        assert reused, "httpx opened a new connection: the idle one was not reused"
        assert response.status_code == 200

"""RANKER_WORKERS=2: two worker processes on one port behave as one service (real Redis, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import REDIS_URL, served_process, wait_until

TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = json.dumps({"user": {"id": "u1"}, "candidates": [{"id": f"v{i}", "video_len": 30.0} for i in range(50)]})


def test_several_workers_need_redis_and_a_watcher():
    with pytest.raises(ValidationError, match="RANKER_REDIS_URL"):
        Settings(workers=2)
    with pytest.raises(ValidationError, match="RANKER_WATCH"):
        Settings(workers=2, redis_url=REDIS_URL, watch="off")
    assert Settings(workers=2, redis_url=REDIS_URL).workers == 2
    assert Settings(redis_url=None).workers == 1  # the embedded default is untouched
    with pytest.raises(ValidationError, match="RANKER_REDIS_URL"):
        Settings(feature_store="redis")


def test_feature_tables_can_stay_in_process_beside_a_redis_control_plane(trained, redis_prefix):
    from fastapi.testclient import TestClient

    from service.app import create_app

    base = {"models_dir": trained.models_dir, "features_dir": trained.features_dir, "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix, "watch": "off"}  # fmt: skip
    for store, kind in (("auto", "redis"), ("redis", "redis"), ("embedded", "embedded")):
        with TestClient(create_app(Settings(**base, feature_store=store))) as client:
            assert client.app.state.ranker.store.kind == kind, store
            assert type(client.app.state.registry.control).__name__ == "RedisControl"


def ranked_by_worker(folder: Path) -> dict[int, int]:
    """Rank requests each worker process has answered, read from its own metric file (where each
    histogram bucket holds its own count, not the running total of the exposition)."""
    counts = {}
    for path in folder.glob("histogram_*.db"):
        pid = int(re.search(r"_(\d+)\.db$", path.name).group(1))
        counts[pid] = 0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "ranker_request_duration_seconds_bucket" and labels.get("route") == "/v1/rank":
                counts[pid] += int(value)
    return counts


def rank_total(url: str) -> float:
    """The /v1/rank requests answered 200 according to one scrape (a new connection: any worker)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    series = r'ranker_request_duration_seconds_count\{method="POST",route="/v1/rank",status="200"\}'
    found = re.search(series + r" (\S+)", text)
    return float(found.group(1)) if found else 0.0


def send_over(connections: int, requests_each: int, url: str) -> list[int]:
    """Open `connections` keep-alive connections at once, then send requests on each in turn."""
    host, port = url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(connections)]
    head = (f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip
    versions = []
    try:
        for _ in range(requests_each):
            for s in socks:
                s.sendall(head + BODY.encode())
            for s in socks:
                versions.append(read_answer(s)["version"])
    finally:
        for s in socks:
            s.close()
    return versions


def read_answer(s: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return json.loads(body)


@pytest.mark.slow
def test_two_workers_share_connections_routing_and_metrics(repo, redis_prefix, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")
    env = {"RANKER_WORKERS": "2", "RANKER_REDIS_URL": REDIS_URL, "RANKER_REDIS_PREFIX": redis_prefix,
           "RANKER_ADMIN_TOKEN": TOKEN, "RANKER_WATCH": "explicit",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}  # fmt: skip
    with served_process(repo, env, log_path=tmp_path / "serve.log") as server:
        url = server.url
        assert not (metrics_dir / "counter_1.db").exists()  # stale files would be summed in
        log = tmp_path / "serve.log"
        wait_until(lambda: log.read_text().count("Application startup complete") == 2, 120, "both workers started")
        time.sleep(0.5)  # each starts accepting one event-loop step after saying so
        assert len(ranked_by_worker(metrics_dir)) == 2

        # A client's few keep-alive connections, opened together, land on both workers (2 each when
        # the machine is quiet; a worker the scheduler delays past the other's wait can miss one).
        assert set(send_over(4, 5, url)) == {2}
        # The middleware records a request once its answer is sent: the last may be a moment behind.
        wait_until(lambda: sum(ranked_by_worker(metrics_dir).values()) == 20, 10, "20 requests in the metric files")
        answered = ranked_by_worker(metrics_dir)
        assert sum(answered.values()) == 20 and min(answered.values()) >= 5, answered

        # Any worker's scrape shows the sum over both.
        assert {rank_total(url) for _ in range(6)} == {20.0}

        # An admin change answered by one worker routes every worker's requests.
        assert httpx.post(f"{url}/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        wait_until(lambda: httpx.post(f"{url}/v1/admin/models/ple/activate", json={"version": 1}, headers=AUTH)
                   .status_code == 200, 30, "activate on a worker that has loaded version 1")  # fmt: skip

        def both_answer_version_1() -> bool:
            """One round of 4 connections, all answered by version 1, with both workers among those
            answering (a loaded machine can hand one round's connections to one worker: try again)."""
            before = ranked_by_worker(metrics_dir)
            versions = set(send_over(4, 1, url))
            after = ranked_by_worker(metrics_dir)
            return versions == {1} and all(after[pid] > before[pid] for pid in answered)

        wait_until(both_answer_version_1, 15, "both workers answering with version 1")

        # A worker that dies is replaced; the service keeps answering and its counts stay in the sum.
        victim = max(ranked_by_worker(metrics_dir))
        before = rank_total(url)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(set(ranked_by_worker(metrics_dir)) - {victim}) == 2, 60, "a new worker")
        assert send_over(2, 3, url) and rank_total(url) >= before + 6
    assert "exited with -9; starting another" in (tmp_path / "serve.log").read_text()


def test_the_fair_listener_hands_out_connections_with_nagle_off():
    """asyncio turns Nagle off only on sockets whose proto says TCP: without this, small answers
    on a worker's connections waited for the client's delayed ACK (p50 52 ms instead of 10 ms)."""
    from service.workers import FairListener

    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as an inherited listener may say
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    listener = FairListener.of(plain, held=lambda: 0)
    with listener, socket.create_connection(listener.getsockname(), timeout=5):
        conn, _ = listener.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_worker_waits_to_accept_only_by_what_it_holds_beyond_the_least_loaded_other():
    """Workers holding alike accept at once: deferring by the whole count made every accept wait
    4 ms on the event loop once a worker held 4 connections, and a connection storm starved them."""
    import multiprocessing

    from service.workers import FairListener, WorkerSlots

    slots = multiprocessing.get_context("spawn").Array("i", 3)
    listener = FairListener.of(socket.socket(), held=lambda: 0, shared=WorkerSlots(slots, 0))
    with listener:
        slots[1], slots[2] = 7, 2
        assert listener.deferral(2) == 0.0  # as few as the least-loaded other (2)
        assert listener.deferral(1000) == 0.004 and listener.deferral(3) == 0.001  # beyond it: 1 ms each, at most 4
        slots[1] = slots[2] = 1000  # a storm: everyone holds many
        assert listener.deferral(1000) == 0.0 and listener.deferral(999) == 0.0
    lone = FairListener.of(socket.socket(), held=lambda: 0)
    with lone:
        assert lone.deferral(0) == 0.0 and lone.deferral(2) == 0.002


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


@pytest.mark.parametrize("worker_loop", ["uvloop", "asyncio"])
def test_either_worker_loop_accepts_through_the_fair_listener(worker_loop):
    """uvloop alone accepts in C, taking every waiting connection past FairListener.accept (and so
    past the spreading of connections over the workers): the workers' loop must accept through it."""
    import multiprocessing

    import uvicorn

    from service.workers import FairListener, WorkerSlots, uvicorn_loop

    loop = uvicorn.Config(app=None, loop=uvicorn_loop(worker_loop)).get_loop_factory()()
    assert (type(loop).__name__ == "FairAcceptLoop") == (worker_loop == "uvloop")
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    published = WorkerSlots(multiprocessing.get_context("spawn").Array("i", 1), 0)  # what it tells other workers
    listener = FairListener.of(plain, held=lambda: 0, shared=published)

    async def serve() -> list[bytes]:
        server = await loop.create_server(Echo, sock=listener)
        answers = []
        for k in range(3):
            reader, writer = await asyncio.open_connection(*listener.getsockname())
            writer.write(b"ping %d" % k)
            answers.append(await asyncio.wait_for(reader.read(100), 5))
            writer.close()
        server.close()
        await server.wait_closed()
        return answers

    try:
        assert loop.run_until_complete(serve()) == [b"ping 0", b"ping 1", b"ping 2"]
        assert len(listener.recent) == 3 and published.slots[0] >= 1  # each connection came through accept()
    finally:
        loop.close()
        listener.close()


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_service(repo, redis_prefix, tmp_path):
    env = {**os.environ, "RANKER_WORKERS": "2", "RANKER_REDIS_URL": REDIS_URL, "RANKER_REDIS_PREFIX": redis_prefix,
           "RANKER_DEVICE": "cuda", "RANKER_FEATURES_DIR": "", "TMPDIR": str(tmp_path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "service.cli", "--models", str(repo), "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "could not start" in done.stderr and "cuda" in done.stderr.lower()
    assert not list(tmp_path.glob("ranker-metrics-*"))  # its temporary metrics folder is removed

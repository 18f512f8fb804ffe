"""A real ranker-serve process: graceful SIGTERM and log lines that clients cannot forge."""

from __future__ import annotations

import logging
import re
import signal
import socket
import time

import httpx
import pytest

from service.observability.logsafe import SafeFormatter, escape
from tests.conftest import served_process, wait_until

REQUEST = b'{"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}]}'


def raw_request(url: str, path: str, body: bytes, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_to_close(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """The whole reply: the server closes the connection after it (it is shutting down)."""
    reply = b""
    while len(reply) < limit:
        chunk = sock.recv(65536)  # bounded by the socket's timeout
        if not chunk:
            break
        reply += chunk
    return reply


def refuses(url: str) -> bool:
    try:
        httpx.post(f"{url}/v1/rank", content=REQUEST, timeout=2)
    except httpx.ConnectError:
        return True  # nothing listens any more
    except httpx.TransportError:
        return False  # accepted in the moment before the listener closed, then dropped: try again
    return False


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(trained, tmp_path):
    with served_process(trained.models_dir, {"RANKER_WATCH": "off"}, log_path=tmp_path / "serve.log") as served:
        request = raw_request(served.url, "/v1/rank", REQUEST)
        with socket.create_connection(address(served.url), timeout=10) as sock:
            sock.sendall(request[:-20])  # the request is in flight: headers and part of the body sent
            time.sleep(0.3)
            served.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: refuses(served.url), timeout=10, what="the server to stop accepting connections")
            time.sleep(0.5)
            assert served.proc.poll() is None, "exited with a request in flight"
            sock.sendall(request[-20:])
            reply = read_to_close(sock)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b'"items"' in reply
        assert served.proc.wait(timeout=30) == 0


HOSTILE = "x\nFAKE 2026-01-01 00:00:00,000 CRITICAL ranker: admin token leaked\r\x1b[31m"


@pytest.mark.slow
def test_client_ids_cannot_forge_log_lines(trained, tmp_path):
    log_path = tmp_path / "serve.log"
    env = {"RANKER_WATCH": "off", "RANKER_LOG_LEVEL": "debug"}
    with served_process(trained.models_dir, env, log_path=log_path) as served:
        body = {"request_id": HOSTILE, "user": {"id": HOSTILE},
                "candidates": [{"id": HOSTILE, "video_len": 30.0}, {"id": "v2", "video_len": 10.0}]}  # fmt: skip
        r = httpx.post(f"{served.url}/v1/rank", json=body, timeout=10)
        assert r.status_code == 200 and r.json()["request_id"] == HOSTILE  # echoed exactly in the response
        for path in ("/v1/models/a%0AFAKE", "/v1/models/a%0D%0AFAKE%1b", "/v2/models/x%0AFAKE/ready"):
            assert httpx.get(f"{served.url}{path}", timeout=10).status_code in (404, 422)
    text = log_path.read_text()
    lines = text.splitlines()
    assert any("rank request_id=" in line for line in lines), text[-2000:]  # the ids did reach the log
    line_start = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
    forged = [line for line in lines if not line_start.match(line)]
    assert not forged, forged[:5]
    assert "\x1b" not in text and "\r" not in text
    assert "FAKE 2026" in text  # written, but inside the line that carried it: x\nFAKE ...


def test_safe_formatter_escapes_control_characters_but_keeps_tracebacks():
    formatter = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("ranker", logging.INFO, __file__, 1, "id=%s", ("a\nb\r\x00\u2028c",), None)
    assert formatter.format(record) == "INFO id=a\\nb\\r\\x00\\u2028c"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("ranker", logging.ERROR, __file__, 1, "x\ny", (), sys.exc_info())
    out = formatter.format(record)
    assert out.startswith("ERROR x\\ny\nTraceback") and out.rstrip().endswith("ValueError: boom")
    assert escape("plain ünïcödé 用户") == "plain ünïcödé 用户"

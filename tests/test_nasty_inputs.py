"""Hostile and broken requests against a real server process: always a clear 4xx, never a 5xx or a hang."""

import json
import socket
import time

import httpx
import pytest

from tests.conftest import serve_process

OK = {"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}]}


@pytest.fixture(scope="module")
def server(trained):
    env = {"RANKER_BODY_TIMEOUT_S": "1", "RANKER_WATCH": "off"}
    with serve_process(trained.models_dir, env) as url:
        yield url


def post(url, content, content_type="application/json"):
    return httpx.post(f"{url}/v1/rank", content=content, headers={"content-type": content_type}, timeout=30)


def deep(depth):
    return b'{"user": {"id": "u", "features": {"a": ' + b"[" * depth + b"]" * depth + b'}}, "candidates": []}'


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, content, content_type, status, field",
    [
        ("10 MB body", b'{"user": {"id": "' + b"x" * (10 << 20) + b'"}}', "application/json", 413, "body"),
        ("100k candidates", json.dumps({"user": {"id": "u"}, "candidates": [{"id": f"v{i}"} for i in range(100_000)]}).encode(),
         "application/json", 413, "candidates"),
        ("deeply nested", deep(100_000), "application/json", 400, "body"),
        ("nested features", deep(50), "application/json", 422, "user.features.a"),
        ("truncated", json.dumps(OK).encode()[:-7], "application/json", 400, "body"),  # not JSON: 400, not 422
        ("not json", b"user=u1&candidates=v1", "application/x-www-form-urlencoded", 415, "content-type"),
        ("wrong content type", json.dumps(OK).encode(), "text/plain", 415, "content-type"),
        ("bad utf-8", b'{"user": {"id": "\xff\xfe"}}', "application/json", 400, "body"),
        ("lone surrogate", b'{"user": {"id": "\\ud800"}, "candidates": [{"id": "a", "video_len": 3}]}', "application/json", 422, "user.id"),
        ("NaN literal", b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": NaN}]}', "application/json", 422, "candidates[0].video_len"),
        ("huge number", b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 1e999}]}', "application/json", 422, "candidates[0].video_len"),
        ("huge top_k float", b'{"user": {"id": "u"}, "top_k": 1e300, "candidates": [{"id": "a", "video_len": 3}]}', "application/json", 422, "top_k"),
        ("duplicate ids", json.dumps({"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3}] * 2}).encode(),
         "application/json", 422, "candidates[1].id"),
        ("array body", b"[]", "application/json", 422, "body"),
        ("empty body", b"", "application/json", 422, None),
    ],
)
def test_hostile_requests_get_a_clear_4xx(server, name, content, content_type, status, field):
    r = post(server, content, content_type)
    assert r.status_code == status, (name, r.text[:300])
    error = r.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error["field"] == field, (name, error)
    assert httpx.post(f"{server}/v1/rank", json=OK, timeout=10).status_code == 200  # still serving


@pytest.mark.slow
def test_unicode_ids_are_ranked_and_echoed_exactly(server):
    ids = ["видео-1", "视频😀", "a\u0301", "v\u200b", "'; DROP TABLE"]
    body = {"user": {"id": "用户"}, "candidates": [{"id": i, "video_len": 10.0 + k} for k, i in enumerate(ids)]}
    r = httpx.post(f"{server}/v1/rank", json=body, timeout=10)
    assert r.status_code == 200 and sorted(item["id"] for item in r.json()["items"]) == sorted(ids)


@pytest.mark.slow
def test_a_slow_loris_body_times_out_without_blocking_others(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"user\":")  # fmt: skip
        start = time.monotonic()
        assert httpx.post(f"{server}/v1/rank", json=OK, timeout=10).status_code == 200  # others are served meanwhile
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        assert time.monotonic() - start < 5

"""A small HTTP/1.1 load generator (asyncio, raw keep-alive sockets): the one client every server sees.

Two modes, each printing one JSON object on stdout:
  closed  `--connections N`: N connections send back to back for `--seconds`; throughput at
          saturation (requests/s that answered 200) and latencies.
  open    `--rate R`: requests start on a fixed schedule (R per second) whatever the answers do;
          a request's latency counts from its scheduled start, so a stalled server is not hidden
          (no coordinated omission). Connections come from a pool that grows when all are busy.
Raw sockets rather than an HTTP library keep the client's own CPU cost per request small: on a
2-core machine it shares the cores with the server under test.

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/rank --body body.json closed --connections 8
    python -m bench.loadgen --url ... --body body.json open --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, raw: bytes) -> int:
        """Send one request and read the whole answer; returns the status code."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        return status

    def close(self) -> None:
        self.writer.close()


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(host: str, port: int, raw: bytes, connections: int, seconds: float, warmup: float) -> dict:
    conns = [await Connection.open(host, port) for _ in range(connections)]
    start = time.perf_counter()
    measure_from, deadline = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker(conn: Connection) -> None:
        while (t := time.perf_counter()) < deadline:
            status = await conn.request(raw)
            done = time.perf_counter()
            if t >= measure_from:
                latencies.append(done - t)
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    ok = statuses.get(200, 0)
    return {"mode": "closed", "connections": connections, "seconds": seconds, "requests": len(latencies),
            "throughput_rps": ok / seconds, "statuses": statuses, **percentiles(latencies)}  # fmt: skip


async def open_loop(host: str, port: int, raw: bytes, rate: float, seconds: float, warmup: float) -> dict:
    idle: list[Connection] = [await Connection.open(host, port) for _ in range(8)]
    opened = len(idle)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + 0.01
    total = int((warmup + seconds) * rate)
    measured_from = int(warmup * rate)

    async def one(i: int, scheduled: float) -> None:
        nonlocal opened
        if idle:
            conn = idle.pop()
        else:
            conn = await Connection.open(host, port)
            opened += 1
        try:
            status = await conn.request(raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            # A pooled connection that sat idle past the server's keep-alive timeout was closed by
            # the server: reopen and send again (the latency still counts from the schedule).
            conn.close()
            conn = await Connection.open(host, port)
            opened += 1
            status = await conn.request(raw)
        done = time.perf_counter()
        idle.append(conn)
        if i >= measured_from:
            latencies.append(done - scheduled)
            statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start - warmup
    for c in idle:
        c.close()
    return {"mode": "open", "rate": rate, "seconds": seconds, "requests": len(latencies), "connections_opened": opened,
            "achieved_rps": statuses.get(200, 0) / max(elapsed, 1e-9), "statuses": statuses,
            **percentiles(latencies)}  # fmt: skip


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="file with the JSON request body")
    p.add_argument("--header", action="append", default=[], help="extra header 'Name: value'")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("closed").add_argument("--connections", type=int, default=8)
    sub.add_parser("open").add_argument("--rate", type=float, required=True)
    args = p.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    headers = dict(h.split(":", 1) for h in args.header)
    host, port, raw = build_request(args.url, body, {k.strip(): v.strip() for k, v in headers.items()})
    if args.mode == "closed":
        result = asyncio.run(closed_loop(host, port, raw, args.connections, args.seconds, args.warmup))
    else:
        result = asyncio.run(open_loop(host, port, raw, args.rate, args.seconds, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Hot-swap 100 model versions while clients keep ranking: failed requests, p99, memory.

A real `ranker-serve` process (explicit watch mode, admin token) serves version 1 of a copy of the
newest local model. Concurrent keep-alive clients send 100-candidate requests throughout. After a
steady phase, the script adds version 2, 3, ... 101 (copies of the same model, renumbered), and for
each: load -> activate -> unload the previous one. It prints failed requests, latency percentiles
in the steady phase and during the swaps, and the server's RSS and open file descriptors before
and after (summed over the worker processes with `--workers N`, which serves through the Redis
control plane at `--redis-url`). Writes bench/results/swap_under_load.json (or --out).

Paced load: `--rate R` sends R requests/s in total (closed loop without it); `--probe S` first
measures capacity (closed loop for S seconds) and, unless --rate is given, paces at
`--load-fraction` (default 0.8) of it. `--swap-every S` waits S seconds between swaps.

    python -m bench.swap_under_load [--models models] [--swaps 100] [--steady 10] [--concurrency 4]
    # the sustained run of issue 9: ~80 % of measured capacity, a swap every 2 s, 100 swaps
    python -m bench.swap_under_load --probe 10 --swaps 100 --swap-every 2 --out bench/results/swap_under_load_80pct.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import ROOT, delete_keys, machine, newest_version, percentiles_ms, print_table, served

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = json.dumps({"user": {"id": "u1"}, "context": {"hour": 20},
                   "candidates": [{"id": f"v{i}", "video_len": 5.0 + i} for i in range(100)]}).encode()  # fmt: skip


def process_tree(pid: int) -> list[int]:
    """The server's process and its descendants (with --workers, the supervisor and each worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid, *(p for kid in kids for p in process_tree(kid))]


def proc_stats(pid: int) -> dict:
    """RSS and open file descriptors summed over the server's process tree."""
    rss_kb = fds = 0
    for p in process_tree(pid):
        status = Path(f"/proc/{p}/status").read_text()
        rss_kb += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
    return {"rss_mb": rss_kb / 1024, "open_fds": fds}


class Load:
    """Clients in a background thread; every answer is recorded with the phase it fell in."""

    def __init__(self, url: str, concurrency: int, rate: float | None = None):
        self.url, self.concurrency, self.rate = url, concurrency, rate  # rate: requests/s in all, None: flat out
        self.phase = "warmup"
        self.records: list[tuple[str, float, int, int | None]] = []  # phase, seconds, status, version
        self.retried: Counter = Counter()  # per phase: requests sent again after a closed keep-alive connection
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=30) as client:

            async def worker(i: int):
                start, sent = time.perf_counter(), 0
                while not self.stop.is_set():
                    if self.rate:  # worker i's k-th request is due at start + (k + i / n) * n / rate
                        due = start + (sent + i / self.concurrency) * self.concurrency / self.rate
                        await asyncio.sleep(max(0.0, due - time.perf_counter()))
                        sent += 1
                    phase, t = self.phase, time.perf_counter()
                    status, version, retried = await self._rank(client)
                    self.records.append((phase, time.perf_counter() - t, status, version))
                    self.retried[phase] += retried

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    @staticmethod
    async def _rank(client: httpx.AsyncClient) -> tuple[int, int | None, bool]:
        """One /v1/rank call as a correct HTTP/1.1 client makes it: a request sent on a reused
        keep-alive connection that the server closed before any byte of the answer (the keep-alive
        race, docs/reliability.md) is sent once more on a new connection, as browsers and Go do;
        /v1/rank is idempotent. Returns (status, version, retried); status 0: no HTTP answer."""
        for attempt in (0, 1):
            reused, answering = True, False

            async def trace(event: str, info: dict) -> None:
                nonlocal reused, answering
                reused = reused and event != "connection.connect_tcp.started"
                answering = answering or event == "http11.receive_response_headers.complete"

            try:
                r = await client.post("/v1/rank", content=BODY, headers={"content-type": "application/json"},
                                      extensions={"trace": trace})  # fmt: skip
                return r.status_code, r.json().get("version"), attempt == 1
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if attempt == 1 or not reused or answering:
                    return 0, None, attempt == 1
            except httpx.HTTPError:
                return 0, None, attempt == 1
        raise AssertionError("unreachable")

    def throughput(self, phase: str, seconds: float) -> float:
        return sum(1 for r in self.records if r[0] == phase and r[2] == 200) / seconds


def probe_capacity(url: str, concurrency: int, seconds: float) -> float:
    """Requests/s the server answers with clients sending flat out (closed loop)."""
    load = Load(url, concurrency)
    load.thread.start()
    time.sleep(1.0)  # connections open, caches warm
    load.phase = "probe"
    time.sleep(seconds)
    load.stop.set()
    load.thread.join(timeout=60)
    return load.throughput("probe", seconds)


def add_version(repo: Path, source: Path, version: int) -> None:
    """Publish a renumbered copy the way training does: build beside, then rename into place."""
    staging = repo / "ple" / f".staging-{version}"
    shutil.copytree(source, staging)
    spec = json.loads((staging / "model.json").read_text())
    spec["version"] = version
    (staging / "model.json").write_text(json.dumps(spec))
    staging.rename(repo / "ple" / str(version))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--name", default="ple")
    p.add_argument("--swaps", type=int, default=100)
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady load before the swaps")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rate", type=float, help="requests/s in total (default: flat out, or --load-fraction of --probe)")
    p.add_argument("--probe", type=float, default=0.0, help="seconds of a flat-out capacity probe first (0: none)")
    p.add_argument("--load-fraction", type=float, default=0.8,
                   help="with --probe and no --rate: rate = this x capacity")
    p.add_argument("--swap-every", type=float, default=0.0, help="seconds between swaps (0: back to back)")
    p.add_argument("--workers", type=int, default=1, help="RANKER_WORKERS (above 1: needs --redis-url)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="the control plane with --workers")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "swap_under_load.json")
    args = p.parse_args()
    source = newest_version(args.models, args.name)

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        (repo / "ple").mkdir(parents=True)
        add_version(repo, source, 1)
        env = {"RANKER_ADMIN_TOKEN": TOKEN, "RANKER_WATCH": "explicit", "RANKER_FEATURES_DIR": ""}
        prefix = f"bench-swap-{os.getpid()}:"
        if args.workers > 1:  # worker processes share routing through Redis; each is a replica
            env.update(RANKER_WORKERS=str(args.workers), RANKER_REDIS_URL=args.redis_url, RANKER_REDIS_PREFIX=prefix,
                       RANKER_FEATURE_STORE="embedded")  # fmt: skip
        with served(repo, env, log_level="warning") as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as admin:
            url, proc = server.url, server.proc
            capacity = probe_capacity(url, args.concurrency, args.probe) if args.probe > 0 else None
            rate = args.rate or (capacity * args.load_fraction if capacity else None)
            load_average_before = os.getloadavg()
            load = Load(url, args.concurrency, rate)
            load.thread.start()
            time.sleep(3)
            before = proc_stats(proc.pid)
            load.phase = "steady"
            time.sleep(args.steady)
            load.phase = "swapping"
            swap_seconds, rss_trend, fds_trend = [], [], []
            swapping_started = time.perf_counter()
            for version in range(2, args.swaps + 2):
                next_swap = time.perf_counter() + args.swap_every
                add_version(repo, source, version)
                t = time.perf_counter()
                for step in (admin.post(f"/v1/admin/models/ple/versions/{version}/load"),
                             admin.post("/v1/admin/models/ple/activate", json={"version": version}),
                             admin.delete(f"/v1/admin/models/ple/versions/{version - 1}")):  # fmt: skip
                    step.raise_for_status()
                swap_seconds.append(time.perf_counter() - t)
                shutil.rmtree(repo / "ple" / str(version - 1))
                if (version - 1) % 10 == 0:
                    stats = proc_stats(proc.pid)
                    rss_trend.append(round(stats["rss_mb"], 1))
                    fds_trend.append(stats["open_fds"])
                time.sleep(max(0.0, next_swap - time.perf_counter()))
            swapping_seconds = time.perf_counter() - swapping_started
            load.phase = "after"
            time.sleep(3)
            after = proc_stats(proc.pid)
            load_average_after = os.getloadavg()
            load.stop.set()
            load.thread.join(timeout=60)

    if args.workers > 1:
        delete_keys(args.redis_url, f"{prefix}*")
    summary = {}
    for phase in ("steady", "swapping"):
        rows = [r for r in load.records if r[0] == phase]
        summary[phase] = {**percentiles_ms([r[1] for r in rows]),
                          "failed": sum(1 for r in rows if r[2] != 200),
                          # status of each failure (0: no HTTP answer), so a failure can be told apart
                          "failed_statuses": dict(Counter(str(r[2]) for r in rows if r[2] != 200)),
                          # answered on a second try: the server had closed the reused connection
                          "retried": load.retried[phase],
                          "versions_seen": len({r[3] for r in rows})}  # fmt: skip
    result = {"machine": machine(), "swaps": args.swaps, "concurrency": args.concurrency, "model": str(source),
              "workers": args.workers,
              "capacity_rps": capacity, "target_rps": rate, "swap_every_s": args.swap_every,
              "achieved_rps_swapping": load.throughput("swapping", swapping_seconds),
              "swapping_seconds": swapping_seconds,
              "load_average_before": load_average_before, "load_average_after": load_average_after,
              "open_fds_every_10_swaps": fds_trend,
              "swap_call_ms": percentiles_ms(swap_seconds), "phases": summary,
              "server_before": before, "server_after": after,
              "rss_growth_mb": after["rss_mb"] - before["rss_mb"], "rss_every_10_swaps_mb": rss_trend}  # fmt: skip
    print_table(["phase", "requests", "failed", "retried", "p50 ms", "p95 ms", "p99 ms", "versions"],
                [[ph, s["n"], s["failed"], s["retried"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["versions_seen"]]
                 for ph, s in summary.items()])  # fmt: skip
    print(f"\nswap (load + activate + unload) p50 {result['swap_call_ms']['p50_ms']:.1f} ms, "
          f"p99 {result['swap_call_ms']['p99_ms']:.1f} ms")  # fmt: skip
    print(f"server RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB "
          f"({result['rss_growth_mb']:+.1f}), open fds {before['open_fds']} -> {after['open_fds']}")  # fmt: skip
    print(f"RSS every 10 swaps (MB): {rss_trend}; open fds: {fds_trend}")
    if capacity:
        print(f"capacity {capacity:.1f} req/s (flat out, {args.concurrency} clients)", end="; ")
    print(f"target {rate or 0:.1f} req/s, achieved {result['achieved_rps_swapping']:.1f} req/s while swapping "
          f"for {swapping_seconds:.0f} s; load average {load_average_before[0]:.2f} -> {load_average_after[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = sum(s["failed"] for s in summary.values())
    if failed:
        raise SystemExit(f"{failed} failed requests")


if __name__ == "__main__":
    main()

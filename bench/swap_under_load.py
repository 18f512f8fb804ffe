"""Hot-swap 100 model versions while clients keep ranking: failed requests, p99, memory.

A real `ranker-serve` process (explicit watch mode, admin token) serves version 1 of a copy of the
newest local model. Concurrent keep-alive clients send 100-candidate requests throughout. After a
steady phase, the script adds version 2, 3, ... 101 (copies of the same model, renumbered), and for
each: load -> activate -> unload the previous one. It prints failed requests, latency percentiles
in the steady phase and during the swaps, and the server's RSS and open file descriptors before
and after. Writes bench/results/swap_under_load.json.

    python bench/swap_under_load.py [--models models] [--swaps 100] [--steady 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, newest_version, percentiles_ms, print_table, served, write_result  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = json.dumps({"user": {"id": "u1"}, "context": {"hour": 20},
                   "candidates": [{"id": f"v{i}", "video_len": 5.0 + i} for i in range(100)]}).encode()  # fmt: skip


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "open_fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


class Load:
    """Clients in a background thread; every answer is recorded with the phase it fell in."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.concurrency = url, concurrency
        self.phase = "warmup"
        self.records: list[tuple[str, float, int, int | None]] = []  # phase, seconds, status, version
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=30) as client:

            async def worker():
                while not self.stop.is_set():
                    phase, t = self.phase, time.perf_counter()
                    try:
                        r = await client.post("/v1/rank", content=BODY, headers={"content-type": "application/json"})
                        status, version = r.status_code, r.json().get("version")
                    except httpx.HTTPError:
                        status, version = 0, None
                    self.records.append((phase, time.perf_counter() - t, status, version))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))


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
    args = p.parse_args()
    source = newest_version(args.models, args.name)

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        (repo / "ple").mkdir(parents=True)
        add_version(repo, source, 1)
        env = {"RANKER_ADMIN_TOKEN": TOKEN, "RANKER_WATCH": "explicit", "RANKER_FEATURES_DIR": ""}
        with served(repo, env) as (url, proc), httpx.Client(base_url=url, headers=AUTH, timeout=60) as admin:
            load = Load(url, args.concurrency)
            load.thread.start()
            time.sleep(3)
            before = proc_stats(proc.pid)
            load.phase = "steady"
            time.sleep(args.steady)
            load.phase = "swapping"
            swap_seconds, rss_trend = [], []
            for version in range(2, args.swaps + 2):
                add_version(repo, source, version)
                t = time.perf_counter()
                for step in (admin.post(f"/v1/admin/models/ple/versions/{version}/load"),
                             admin.post("/v1/admin/models/ple/activate", json={"version": version}),
                             admin.delete(f"/v1/admin/models/ple/versions/{version - 1}")):  # fmt: skip
                    step.raise_for_status()
                swap_seconds.append(time.perf_counter() - t)
                shutil.rmtree(repo / "ple" / str(version - 1))
                if (version - 1) % 10 == 0:
                    rss_trend.append(round(proc_stats(proc.pid)["rss_mb"], 1))
            load.phase = "after"
            time.sleep(3)
            after = proc_stats(proc.pid)
            load.stop.set()
            load.thread.join(timeout=60)

    summary = {}
    for phase in ("steady", "swapping"):
        rows = [r for r in load.records if r[0] == phase]
        summary[phase] = {**percentiles_ms([r[1] for r in rows]),
                          "failed": sum(1 for r in rows if r[2] != 200),
                          "versions_seen": len({r[3] for r in rows})}  # fmt: skip
    result = {"swaps": args.swaps, "concurrency": args.concurrency, "model": str(source),
              "swap_call_ms": percentiles_ms(swap_seconds), "phases": summary,
              "server_before": before, "server_after": after,
              "rss_growth_mb": after["rss_mb"] - before["rss_mb"], "rss_every_10_swaps_mb": rss_trend}  # fmt: skip
    print_table(["phase", "requests", "failed", "p50 ms", "p95 ms", "p99 ms", "versions"],
                [[ph, s["n"], s["failed"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["versions_seen"]]
                 for ph, s in summary.items()])  # fmt: skip
    print(f"\nswap (load + activate + unload) p50 {result['swap_call_ms']['p50_ms']:.1f} ms, "
          f"p99 {result['swap_call_ms']['p99_ms']:.1f} ms")  # fmt: skip
    print(f"server RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB "
          f"({result['rss_growth_mb']:+.1f}), open fds {before['open_fds']} -> {after['open_fds']}")  # fmt: skip
    print(f"RSS every 10 swaps (MB): {rss_trend}")
    print(f"wrote {write_result('swap_under_load', result)}")


if __name__ == "__main__":
    main()

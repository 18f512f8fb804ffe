"""Where a loaded `ranker-serve` spends its time, by area, from py-spy samples of every Python thread
with native frames (and of the workers with --workers): the thread-pool thread that runs /v1/rank
is what a plain cProfile of the event loop never sees, and native frames tell a thread that waits
for the GIL from one that waits for work.

    python -m bench.profile_server [--models models] [--features data/features] [--candidates 100 500]
                                   [--seconds 15] [--connections 4] [--workers 1] [--redis-url URL]

The server runs with one ONNX Runtime thread per session (RANKER_INTRA_OP_THREADS=1: ORT's own
pool threads are not Python threads, py-spy would not see inference on them) under closed-loop
load from bench.loadgen (raw sockets, a separate process); py-spy (`pip install py-spy`; it needs
ptrace: root, or kernel.yama.ptrace_scope 0) samples at 100 Hz for `--seconds`. By its innermost
named native frame a sample is idle (epoll, or a lock wait: a pool thread waiting for work) or a
GIL wait (pthread_cond_timedwait); the rest is busy, in the first area that matches its stack:

  inference        onnxruntime's Session.run
  ranking          the service's own request Python: service/ranking, service/features, contract
  route and pool   the rest of the thread-pool thread: FastAPI's endpoint wrapper, anyio, the route
  event loop       the event-loop thread: uvloop and httptools, middlewares, routing, body parsing, pydantic
  other            anything else (the watcher, the shadow and log threads, metrics, GC)

Prints each area's share of the active (not idle) samples and the top Python functions per area;
the JSON also has thread milliseconds per answered request, which undercount: with native
unwinding py-spy falls behind its rate on a busy 2-core machine. Writes
bench/results/profile_server_<N>w.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import ROOT, make_request, print_table, served, write_result

AREAS = ("inference", "ranking", "route and pool", "event loop", "other", "GIL wait", "idle")
OWN_CODE = re.compile(r"\((service/(ranking|features)|contract)/")
RATE_HZ = 100
HEX = re.compile(r"^0x[0-9a-f]+")
IDLE_NATIVE = ("epoll", "PyThread_acquire_lock_timed", "sem_clockwait", "sem_timedwait", "sem_wait", "select", "poll",
               "clock_nanosleep", "nanosleep")  # the last two: the workers' supervisor between its checks
IDLE_PYTHON = ("Condition.wait", "Queue.get", "main (multiprocessing/resource_tracker.py")  # the tracker's blocking read
GIL_NATIVE = ("pthread_cond_timedwait", "pthread_cond_wait")


def area(frames: list[str]) -> str:
    thread, stack = frames[0], frames[1:]
    named = [f for f in stack if not HEX.match(f)]
    leaf = named[-1].split(" (")[0] if named else ""
    if leaf.startswith(GIL_NATIVE):
        return "GIL wait"
    if leaf.startswith(IDLE_NATIVE) or any(f.startswith(IDLE_PYTHON) for f in named[-3:]):
        return "idle"
    if any("Session.run (onnxruntime" in f for f in stack):
        return "inference"
    if any(OWN_CODE.search(f) for f in stack):
        return "ranking"
    if "MainThread" in thread:
        return "event loop"
    if "AnyIO worker thread" in thread:
        return "route and pool"
    return "other"


def python_frame(frame: str) -> bool:
    return ".py:" in frame


def read_samples(path: Path) -> tuple[Counter, dict[str, Counter]]:
    """Samples per area, and per area the innermost Python frames that took them."""
    by_area: Counter[str] = Counter()
    top: dict[str, Counter] = {a: Counter() for a in AREAS}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r" \(/\S*?/(site-packages|lib/python3\.\d+)/", " (", f) for f in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/", "") for f in frames]
        # --subprocesses puts the process (and its parents, whose command lines may hold a ';') first.
        start = next((i for i, f in enumerate(frames) if f.startswith("thread (")), 0)
        frames = frames[start:]
        name = area(frames)
        by_area[name] += int(count)
        python = [f for f in frames[1:] if python_frame(f)]
        top[name][python[-1] if python else frames[-1]] += int(count)
    return by_area, top


def profile(args: argparse.Namespace, n: int, work: Path) -> dict:
    body = work / f"body{n}.json"
    body.write_bytes(make_request(n, args.features))
    env = {"RANKER_FEATURES_DIR": str(args.features), "RANKER_WATCH": "off" if args.workers == 1 else "explicit",
           "RANKER_WORKERS": str(args.workers), "RANKER_INTRA_OP_THREADS": "1"}  # fmt: skip
    if args.redis_url:
        env |= {"RANKER_REDIS_URL": args.redis_url, "RANKER_FEATURE_STORE": "embedded"}
    samples = work / f"samples{n}.txt"
    with served(args.models, env, log_level="warning") as server:
        loadgen = [sys.executable, "-m", "bench.loadgen", "--url", f"{server.url}/v1/rank", "--body", str(body),
                   "--seconds", str(args.seconds + 4), "--warmup", "2",
                   "closed", "--connections", str(args.connections)]  # fmt: skip
        load = subprocess.Popen(loadgen, stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        subprocess.run([args.py_spy, "record", "--pid", str(server.proc.pid), "--duration", str(args.seconds),
                        "--rate", str(RATE_HZ), "--format", "raw", "--threads", "--native", "--idle",
                        *(["--subprocesses"] if args.workers > 1 else []), "-o", str(samples)],
                       check=True, capture_output=True)  # fmt: skip
        loaded = json.loads(load.communicate(timeout=args.seconds + 60)[0])
    by_area, top = read_samples(samples)
    requests = loaded["throughput_rps"] * args.seconds  # answered while py-spy sampled
    per_request_ms = 1000 / RATE_HZ / requests  # thread time one sample stands for, per request
    return {
        "throughput_rps": loaded["throughput_rps"],
        "p50_ms": loaded["p50_ms"],
        "samples": dict(by_area),
        "thread_ms_per_request": {a: by_area[a] * per_request_ms for a in AREAS},
        "top_frames_ms_per_request": {a: [[frame, count * per_request_ms] for frame, count in top[a].most_common(8)]
                                      for a in AREAS},  # fmt: skip
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--redis-url", help="the control plane the workers share (needed with --workers > 1)")
    p.add_argument("--out", help="result file name under bench/results/ (default profile_server_<N>w)")
    args = p.parse_args()
    args.py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if args.py_spy is None:
        p.error("py-spy not found: pip install py-spy")
    if args.workers > 1 and not args.redis_url:
        p.error("--workers > 1 needs --redis-url (the workers share routing through it)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: profile(args, n, Path(tmp)) for n in args.candidates}
    active = AREAS[:-1]  # every area but idle
    for n in args.candidates:
        total = sum(results[n]["samples"].get(a, 0) for a in active)
        results[n]["share_of_active"] = {a: results[n]["samples"].get(a, 0) / total for a in active}
    rows = [[name, *(100 * results[n]["share_of_active"][name] for n in args.candidates)] for name in active]
    rows.append(["req/s at saturation", *(results[n]["throughput_rps"] for n in args.candidates)])
    print(f"% of active (not idle) samples; {args.workers} worker(s), {args.connections} connections, one ORT thread")
    print_table(["area", *(f"{n} candidates" for n in args.candidates)], rows)
    for n in args.candidates:
        print(f"\n{n} candidates, top frames:")
        for area_name in AREAS:
            top = results[n]["top_frames_ms_per_request"][area_name][:3]
            print(f"  {area_name}: " + ", ".join(f"{frame} {ms:.3f} ms" for frame, ms in top))
    path = write_result(args.out or f"profile_server_{args.workers}w", {
        "models": str(args.models), "workers": args.workers, "connections": args.connections,
        "seconds": args.seconds, "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "results": {str(n): r for n, r in results.items()},
    })  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

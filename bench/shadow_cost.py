"""What a shadow version costs the requests it shadows: p50/p95/p99 of the serving version with a
shadow at sample 1.0 against none, at the same offered load, 100 and 500 candidates.

One `ranker-serve` process (the default settings) serves a repository holding the model's newest
version twice: as version 2 (serving) and as version 1 (the shadow: the same weights, so the same
inference work, and full agreement, which checks the comparison too). Per size: throughput at
saturation without a shadow (closed loop, bench/loadgen.py), then `--rounds` rounds of an open-loop
run at `--load` x that rate with no shadow and with the shadow, alternated so both see the same
neighbours. After each shadowed run it reads the shadow's outcomes from /metrics (scored, skipped
because its queue was full). Prints medians over the rounds and writes bench/results/shadow_cost.json.

    python -m bench.shadow_cost [--models models] [--features data/features] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.common import ROOT, machine, make_request, newest_version, print_table, served, write_result

TOKEN = "bench-shadow"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WARMUP_S = 2.0


def loadgen(url: str, body: Path, mode: list[str], seconds: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--body", str(body),
           "--seconds", str(seconds), "--warmup", str(WARMUP_S), *mode]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r'^ranker_shadow_requests_total\{model="[^"]+",outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(v) for outcome, v in found}


def agreement(url: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    s = re.search(r'^ranker_shadow_rank_correlation_sum\{[^}]*\} (\S+)$', text, re.M)
    n = re.search(r'^ranker_shadow_rank_correlation_count\{[^}]*\} (\S+)$', text, re.M)
    return float(s.group(1)) / float(n.group(1)) if s and n and float(n.group(1)) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--name", default="ple")
    p.add_argument("--sizes", default="100,500")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=4, help="closed-loop connections for the saturation rate")
    p.add_argument("--load", type=float, default=0.5, help="offered load as a share of the saturation rate")
    args = p.parse_args()
    source = newest_version(args.models, args.name)
    results: dict = {"machine": machine(), "load_average_at_start": os.getloadavg()[0], "rounds": args.rounds,
                     "seconds": args.seconds, "load": args.load, "model": str(source), "sizes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        for version in (1, 2):
            target = repo / args.name / str(version)
            shutil.copytree(source, target)
            spec = json.loads((target / "model.json").read_text())
            (target / "model.json").write_text(json.dumps({**spec, "version": version}))
        env = {"RANKER_FEATURES_DIR": str(args.features), "RANKER_WATCH": "off", "RANKER_ADMIN_TOKEN": TOKEN}
        with served(repo, env, log_level="warning") as server:
            admin = f"{server.url}/v1/admin/models/{args.name}"
            httpx.post(f"{admin}/versions/1/load", headers=AUTH).raise_for_status()  # 2 serves (the newest)
            for n in [int(s) for s in args.sizes.split(",")]:
                body = Path(tmp) / f"body-{n}.json"
                body.write_bytes(make_request(n, args.features))
                url = f"{server.url}/v1/rank"
                saturation = loadgen(url, body, ["closed", "--connections", str(args.connections)], args.seconds)
                rate = saturation["throughput_rps"] * args.load
                runs: dict[str, list[dict]] = {"none": [], "shadow": []}
                for r in range(args.rounds):
                    for condition in ("none", "shadow"):
                        if condition == "shadow":
                            shadow = {"version": 1, "sample": 1.0}
                            httpx.put(f"{admin}/shadow", json=shadow, headers=AUTH).raise_for_status()
                            before = shadow_counts(server.url)
                        run = loadgen(url, body, ["open", "--rate", f"{rate:.2f}"], args.seconds)
                        if condition == "shadow":
                            after = shadow_counts(server.url)
                            run["shadow_outcomes"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                            httpx.delete(f"{admin}/shadow", headers=AUTH).raise_for_status()
                        run["load_average"] = os.getloadavg()[0]
                        runs[condition].append(run)
                        print(f"{n} candidates, round {r + 1}, {condition}: p50 {run['p50_ms']:.2f} ms, "
                              f"p99 {run['p99_ms']:.2f} ms [load {run['load_average']:.2f}]", flush=True)  # fmt: skip
                summary = {c: {k: statistics.median(run[k] for run in rs) for k in ("p50_ms", "p95_ms", "p99_ms")}
                           for c, rs in runs.items()}  # fmt: skip
                scored = sum(run["shadow_outcomes"].get("scored", 0) for run in runs["shadow"])
                skipped = sum(run["shadow_outcomes"].get("queue_full", 0) for run in runs["shadow"])
                results["sizes"][str(n)] = {"saturation_rps": saturation["throughput_rps"], "offered_rps": rate,
                                            "runs": runs, "median": summary, "shadow_scored": scored,
                                            "shadow_skipped_queue_full": skipped,
                                            "shadow_rank_correlation_mean": agreement(server.url)}  # fmt: skip
    rows = []
    for n, r in results["sizes"].items():
        none, shadow = r["median"]["none"], r["median"]["shadow"]
        share = r["shadow_scored"] / max(r["shadow_scored"] + r["shadow_skipped_queue_full"], 1)
        rows.append([n, f"{r['offered_rps']:.0f}", f"{none['p50_ms']:.2f}", f"{shadow['p50_ms']:.2f}",
                     f"{none['p99_ms']:.2f}", f"{shadow['p99_ms']:.2f}", f"{share:.0%}"])  # fmt: skip
    print(f"\none process, {args.load:.0%} of saturation; medians of {args.rounds} rounds")
    print_table(["cands", "req/s", "p50 none", "p50 shadow", "p99 none", "p99 shadow", "shadowed"], rows)
    print(f"wrote {write_result('shadow_cost', results)}")


if __name__ == "__main__":
    main()

"""In-process /v1/rank cost at two git revisions, measured in alternation on the same machine.

On a shared machine, timings move with the neighbours' load; runs of the two revisions alternate
(A, B, A, B, ...) so that both see the same conditions, and each run times bare session.run and
the service path in alternating blocks of 10 calls. Per run and size it records:
  bare_p50_ms     session.run on the batch the service builds
  service_p50_ms  parse + rank + JSON encode (wall)
  ratio           service_p50_ms / bare_p50_ms
  python_cpu_ms   the same path with inference answered from a cache, in CPU time of the thread:
                  the Python around the model, which preemption by other processes barely moves
  python_calls    Python function calls per request on that path (cProfile): deterministic, so a
                  change in the Python a request runs shows even where the timings are noise
With --http, each revision also runs as a `ranker-serve` process (one per --threads value of
RANKER_INTRA_OP_THREADS), all up at once and measured in turn each round with bench/loadgen.py:
  seq_p50_ms      p50 of sequential requests (one connection): latency at low load
  rps_4conn       throughput with 4 keep-alive connections (closed loop)
Prints medians over the runs and writes bench/results/ab_rank.json (or --out NAME: NAME.json).

    python -m bench.ab_rank main . [--rounds 5] [--sizes 100,500,1000] [--repeat 200]
    python -m bench.ab_rank main . --http [--threads 0,1] [--http-size 500] [--seconds 5]

A revision is exported with `git archive`, and its `service` package is imported from there; "."
is the working tree. Parsing is the route's at that revision: service.api.jsonbody.loads
(service.jsonbody before the subpackages) where it exists, else json.loads (FastAPI's reader),
then the schema's validation.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.common import ROOT, alternated, make_request, print_table, served, write_result


def child(models: Path, features: Path, sizes: list[int], repeat: int) -> dict:
    import orjson
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.schemas import RankRequest
    from service.settings import Settings

    try:
        from service.api.jsonbody import loads
    except ImportError:
        try:  # revisions before service/ had subpackages
            from service.jsonbody import loads  # type: ignore[no-redef]
        except ImportError:  # revisions before service.jsonbody: FastAPI's reader
            loads = json.loads

    def serve(body: bytes) -> None:
        orjson.dumps(ranker.rank(RankRequest.model_validate(loads(body)), {}), option=orjson.OPT_SERIALIZE_NUMPY)

    out: dict = {"load_average_1m": os.getloadavg()[0]}
    app = create_app(Settings(models_dir=models, features_dir=features, watch="off"))
    with TestClient(app):
        ranker = app.state.ranker
        mv, _ = app.state.registry.resolve(None, None, "u42")
        engine_run = mv.engine.run
        for n in sizes:
            body = make_request(n, features)
            seen: dict = {}
            mv.engine.run = lambda inputs: seen.setdefault("inputs", dict(inputs)) and engine_run(inputs)
            serve(body)
            mv.engine.run = engine_run
            inputs = seen["inputs"]
            bare, service = alternated(partial(mv.engine.session.run, None, inputs), partial(serve, body), repeat)
            cached = engine_run(inputs)
            mv.engine.run = lambda _inputs: cached
            cpu = []
            for i in range(repeat + 20):
                t0 = time.thread_time()
                serve(body)
                if i >= 20:
                    cpu.append(time.thread_time() - t0)
            calls = cProfile.Profile()
            calls.enable()
            for _ in range(20):
                serve(body)
            calls.disable()
            mv.engine.run = engine_run
            b = statistics.median(t for t, _ in bare) * 1e3
            s = statistics.median(t for t, _ in service) * 1e3
            out[str(n)] = {"bare_p50_ms": b, "service_p50_ms": s, "ratio": s / b,
                           "python_cpu_ms": statistics.median(cpu) * 1e3,
                           "python_calls": pstats.Stats(calls).total_calls / 20}  # fmt: skip
    return out


def export(rev: str, into: Path) -> Path:
    if rev == ".":
        return ROOT
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("revs", nargs="*", default=["main", "."])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--http", action="store_true", help="also compare ranker-serve processes over loopback")
    p.add_argument("--threads", default="0,1", help="RANKER_INTRA_OP_THREADS values to serve with (--http)")
    p.add_argument("--http-size", type=int, default=500)
    p.add_argument("--seconds", type=float, default=5.0, help="per loadgen measurement (--http)")
    p.add_argument("--out", default="ab_rank", help="result file name under bench/results/")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.models, args.features, sizes, args.repeat)))
        return

    runs: dict[str, list[dict]] = {rev: [] for rev in args.revs}
    http: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in args.revs}
        for r in range(args.rounds):
            for rev in args.revs:
                cmd = [sys.executable, __file__, "--child", "--models", str(args.models), "--features",
                       str(args.features), "--sizes", args.sizes, "--repeat", str(args.repeat)]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(trees[rev])}
                done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tmp)
                runs[rev].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {rev}: load {runs[rev][-1]['load_average_1m']:.2f}", flush=True)
        if args.http:
            http = compare_http(args, trees, Path(tmp))

    keys = ("bare_p50_ms", "service_p50_ms", "ratio", "python_cpu_ms", "python_calls")
    medians = {rev: {str(n): {k: statistics.median(run[str(n)][k] for run in rs) for k in keys} for n in sizes}
               for rev, rs in runs.items()}  # fmt: skip
    loads = [run["load_average_1m"] for rs in runs.values() for run in rs]
    print(f"\nin process: medians over {args.rounds} alternated runs; load average {min(loads):.2f}-{max(loads):.2f}")
    print_table(["cands", "revision", "bare ORT", "service", "ratio", "Python CPU", "Python calls"],
                [[n, rev, *(medians[rev][str(n)][k] for k in keys)] for n in sizes for rev in args.revs])  # fmt: skip
    result = {"revisions": {rev: _describe(rev) for rev in args.revs}, "rounds": args.rounds, "repeat": args.repeat,
              "medians": medians, "runs": runs}  # fmt: skip
    if http:
        http_medians = {name: {k: statistics.median(run[k] for run in rs) for k in ("seq_p50_ms", "rps_4conn")}
                        for name, rs in http.items()}  # fmt: skip
        loads = [run["load_average_1m"] for rs in http.values() for run in rs]
        print(f"\nHTTP, {args.http_size} candidates: medians over {args.rounds} rounds; load average "
              f"{min(loads):.2f}-{max(loads):.2f}")  # fmt: skip
        print_table(["server", "sequential p50 ms", "req/s, 4 connections"],
                    [[name, m["seq_p50_ms"], m["rps_4conn"]] for name, m in http_medians.items()])  # fmt: skip
        result["http"] = {"candidates": args.http_size, "seconds": args.seconds, "medians": http_medians, "runs": http}
    path = write_result(args.out, result)
    print(f"\nwrote {path}")


def compare_http(args, trees: dict[str, Path], tmp: Path) -> dict[str, list[dict]]:
    """Every (revision, threads) server up at once; each round measures them one after another."""
    body = tmp / "body.json"
    body.write_bytes(make_request(args.http_size, args.features))
    runs: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        urls = {}
        for rev, tree in trees.items():
            for threads in args.threads.split(","):
                env = {"PYTHONPATH": str(tree), "RANKER_FEATURES_DIR": str(args.features), "RANKER_WATCH": "off",
                       "RANKER_INTRA_OP_THREADS": threads}  # fmt: skip
                urls[f"{rev} threads={threads}"] = stack.enter_context(served(args.models, env, log_level="warning")).url + "/v1/rank"
        for r in range(args.rounds):
            for name, url in urls.items():
                load = os.getloadavg()[0]
                seq = loadgen(url, body, 1, args.seconds)
                conc = loadgen(url, body, 4, args.seconds)
                runs.setdefault(name, []).append({"load_average_1m": load, "seq_p50_ms": seq["p50_ms"],
                                                  "rps_4conn": conc["throughput_rps"]})  # fmt: skip
                print(f"round {r + 1} {name}: load {load:.2f}, sequential p50 {seq['p50_ms']:.2f} ms, "
                      f"{conc['throughput_rps']:.0f} req/s", flush=True)  # fmt: skip
    return runs


def loadgen(url: str, body: Path, connections: int, seconds: float) -> dict:
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--body", str(body),
           "--seconds", str(seconds), "--warmup", "1", "closed", "--connections", str(connections)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)


def _describe(rev: str) -> str:
    if rev == ".":
        return "working tree at " + subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip()  # fmt: skip
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()

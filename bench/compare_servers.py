"""Our service vs the serving stacks a team would pick instead, side by side on one machine.

Servers, each serving the newest version of the model (same weights, same feature transform, same
scoring formula, same JSON request):
  ple-ranker      `ranker-serve`: one uvicorn process, ONNX Runtime (its default threads)
  ple-ranker-1t   the same with RANKER_INTRA_OP_THREADS=1 (one ORT thread per concurrent request)
  ple-ranker-2w   `ranker-serve` with RANKER_WORKERS=2: two worker processes on one socket, each
                  with ple-ranker's thread settings (ple-ranker-2w-1t: one ORT thread each),
                  routing in Redis (--redis-url, a key prefix of the run's own, deleted
                  after), the feature tables in process like every other server here
                  (RANKER_FEATURE_STORE=embedded)
  ple-ranker-int8, ple-ranker-2w-int8
                  the same two serving the int8 version `ranker-quantize` made of the model
                  (--int8-models: a repository whose newest version of the model is that)
  fastapi-ort     bench/peers/fastapi_ort.py: FastAPI + ONNX Runtime, uvicorn --workers 2, 1 ORT
                  thread per worker: the same RankingCore and model.onnx, the plain two-process server
  fastapi-torch   bench/peers/fastapi_torch.py: FastAPI + PyTorch eager, uvicorn --workers 2,
                  1 torch thread per worker
  bentoml         bench/peers/bento_service.py: BentoML 1.4 + ONNX Runtime, workers=2, 1 ORT thread each
  torchserve      bench/peers/ts_handler.py: TorchServe 0.12 + PyTorch eager, 2 workers, 1 thread each
Peers run from their own virtual environments (bench/setup_peers.sh); a peer whose environment is
missing is skipped and says so.

For 100, 500 and 1,000 candidates a separate client process (bench/loadgen.py) measures throughput
at saturation (closed loop, best of `--connections`) and then p50/p95/p99 at half that rate (open
loop, fixed schedule). Prints a table and writes bench/results/compare_servers.json.

With `--rounds N` every size is measured N times, the servers' order reversed every other round and
the engine alone measured again at the start of each round: on a shared machine one run's ratios
moved by 20-30 % within an hour, so each ratio is read per round (both sides measured minutes
apart) and reported as the median with its range. The table shows each server's median round.

    python -m bench.compare_servers [--servers ple-ranker,fastapi-torch,bentoml,torchserve] [--seconds 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, free_port, make_request, newest_version, print_table, write_result
from bench.servers import ALL, CACHE, SETTINGS, available, drop_bench_keys, launch, stop, wait_ready
from service.schemas import RankRequest

SIZES = (100, 500, 1000)
WARMUP_S = 2.0  # each load run's unmeasured start


def loadgen(url: str, body_file: Path, mode: list[str], seconds: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--body", str(body_file),
           "--seconds", str(seconds), "--warmup", str(WARMUP_S), *mode]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(mode)} failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout)


def agreement(ours: dict, theirs: dict) -> float:
    """Largest relative score difference over the candidates both answers list (same ids expected)."""
    a = {i["id"]: i["score"] for i in ours["items"]}
    b = {i["id"]: i["score"] for i in theirs["items"]}
    if set(a) != set(b):
        return float("inf")
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)


def start(name: str, args, version: Path, probe: bytes) -> tuple[subprocess.Popen, str, dict]:
    """Launch one server and wait until it ranks; returns (process, URL, its first answer)."""
    log_path = CACHE / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:  # the child keeps its own handle
        models = args.int8_models if name.endswith("-int8") else args.models
        proc, url = launch(name, version, models, args.features, free_port(), log, args.redis_url)
    try:
        return proc, url, wait_ready(url, probe, proc)
    except Exception:
        stop(proc)
        raise


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a server's live process tree (its workers, whatever their session)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def saturate(url: str, body: Path, connections: int, args, pid: int) -> dict:
    """One closed-loop run, with the server's CPU per request: its CPU over the whole run (warm-up
    included) over the requests that run answered at its measured rate."""
    before = tree_cpu_seconds(pid)
    run = loadgen(url, body, ["closed", "--connections", str(connections)], args.seconds)
    cpu = tree_cpu_seconds(pid) - before
    answered = run["throughput_rps"] * (args.seconds + WARMUP_S)
    run["server_cpu_ms_per_request"] = 1000 * cpu / answered if answered else None
    return run


def measure(name: str, url: str, body: Path, args, pid: int) -> dict:
    """Saturation (closed loop, best of args.connections), then latency at half that rate."""
    load = os.getloadavg()[0]
    runs = [saturate(url, body, c, args, pid) for c in args.connections]
    best = max(runs, key=lambda r: r["throughput_rps"])
    half = loadgen(url, body, ["open", "--rate", f"{best['throughput_rps'] / 2:.2f}"], args.seconds)
    print(f"  {name}: {best['throughput_rps']:.0f} req/s (c={best['connections']}, "
          f"{best['server_cpu_ms_per_request']:.1f} CPU ms/request), "
          f"half load p50 {half['p50_ms']:.2f} ms  [load {load:.2f}]", flush=True)  # fmt: skip
    return {"saturation": best, "saturation_runs": runs, "half_load": half, "load_average_at_start": load}


def engine_ceilings(version: Path, features: Path, bodies: dict[int, Path], seconds: float) -> dict:
    """Inference alone, no server: two threads (one per core) calling the engine back to back on the
    encoded batch, one intra-op thread each. Runs/s here bound any server's throughput."""
    import threading

    import onnxruntime as ort
    import torch

    from bench.peers.core import RankingCore
    from bench.peers.torch_model import load_model

    core = RankingCore(version, features)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(version / "model.onnx"), options, providers=["CPUExecutionProvider"])
    torch.set_num_threads(1)
    model = load_model(version, CACHE / f"{version.parent.name}-{version.name}.pt")
    out: dict = {}
    for n, body in bodies.items():
        inputs, _ = core.inputs(RankRequest.model_validate_json(body.read_bytes()))
        tensors = (torch.from_numpy(inputs["sparse_ids"]), torch.from_numpy(inputs["dense"]))

        def torch_run():
            with torch.inference_mode():
                model(*tensors)

        for engine, run in (("onnxruntime", lambda: session.run(None, inputs)), ("pytorch", torch_run)):
            counts = [0, 0]
            stop_at = time.perf_counter() + 1 + seconds

            def loop(k: int) -> None:
                while (t := time.perf_counter()) < stop_at:
                    run()
                    counts[k] += t > stop_at - seconds

            threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            out.setdefault(str(n), {})[engine] = sum(counts) / seconds
        print(f"  engines alone, {n} candidates: " + ", ".join(f"{e} {r:.0f} runs/s" for e, r in out[str(n)].items()))
    return out


def rps(run: dict) -> float:
    return run["saturation"]["throughput_rps"]


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def throughput_ratios(rounds: list[dict]) -> dict:
    """ours -> peer -> candidates -> our saturation throughput / the peer's, per round (median, range)."""
    out: dict = {}
    names = list(rounds[0])
    for ours in (n for n in names if n.startswith("ple-ranker")):
        for peer in (n for n in names if not n.startswith("ple-ranker")):
            out.setdefault(ours, {})[peer] = {
                size: spread([rps(r[ours][size]) / rps(r[peer][size]) for r in rounds])
                for size in rounds[0][ours] if size in rounds[0][peer]
            }  # fmt: skip
    return out


def engine_shares(rounds: list[dict], ceilings: list[dict]) -> dict:
    """Our float servers' req/s as a share of the engine alone measured in the same round (issue #20's target)."""
    names = [n for n in rounds[0] if n.startswith("ple-ranker") and not n.endswith("-int8")]
    return {name: {n: spread([rps(r[name][n]) / c[n]["onnxruntime"] for r, c in zip(rounds, ceilings)])
                   for n in rounds[0][name]}
            for name in names}  # fmt: skip


def median_round(runs: list[dict]) -> dict:
    """The round whose saturation throughput is the median (the lower middle one of an even count),
    with every round's throughput beside it."""
    ordered = sorted(runs, key=rps)
    return {**ordered[(len(ordered) - 1) // 2], "rounds_rps": [rps(run) for run in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--name", default="ple")
    p.add_argument("--servers", default=",".join(ALL))
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load run (after 2 s warm-up)")
    p.add_argument("--connections", default="4,16", help="closed-loop connection counts; the best is saturation")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--rounds", type=int, default=1, help="measure every size this many times, alternating the "
                   "servers' order; ratios are per round")
    p.add_argument("--out", default="compare_servers", help="result file name under bench/results/")
    p.add_argument("--int8-models", type=Path, help="for the -int8 servers: a model repository whose newest "
                   "version of --name is the int8 one ranker-quantize made of the version the others serve")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="Redis for ple-ranker-2w's control "
                   "plane (its keys are deleted after the run)")
    args = p.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    args.models, args.features = args.models.resolve(), args.features.resolve()
    version = newest_version(args.models, args.name)
    state = CACHE / f"{version.parent.name}-{version.name}.pt"
    if not state.exists():
        from bench.peers.torch_model import export_state

        print(f"max |torch - onnx| = {export_state(version, state):.2e} (saved {state})")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="compare-"))
    bodies = {}
    for n in (int(s) for s in args.sizes.split(",")):
        bodies[n] = tmp / f"body-{n}.json"
        bodies[n].write_bytes(make_request(n, args.features))

    # Every server runs at once (idle ones cost next to nothing) and each size is measured server
    # after server, so a change in the machine's background load hits all of them alike.
    results, skipped, running, reference = {}, {}, {}, None
    rounds: list[dict] = []  # per round: server -> size -> measure()
    ceilings_by_round: list[dict] = []
    try:
        for name in args.servers.split(","):
            why = available(name)
            if name.endswith("-int8") and not args.int8_models:
                why = "no --int8-models given"
            if why:
                skipped[name] = why
                print(f"skipping {name}: {why}")
                continue
            print(f"{name}: {SETTINGS[name]}", flush=True)
            try:
                proc, url, answer = start(name, args, version, bodies[min(bodies)].read_bytes())
            except Exception as exc:  # one broken peer must not lose the others' figures
                skipped[name] = f"failed: {exc} (log: bench/.cache/logs/{name}.log)"
                print(f"  {name} failed: {exc}")
                continue
            running[name] = (proc, url)
            results[name] = {"settings": SETTINGS[name], "url": url}
            if name == "ple-ranker":
                reference = answer
            elif reference is not None:
                results[name]["max_rel_score_diff_vs_ple_ranker"] = agreement(reference, answer)
        for r in range(args.rounds):
            print(f"round {r + 1} of {args.rounds}; inference alone (2 threads x 1 intra-op thread, no server):",
                  flush=True)  # fmt: skip
            ceilings_by_round.append(engine_ceilings(version, args.features, bodies, args.seconds))
            measured: dict = {name: {} for name in running}
            order = list(running.items())[:: -1 if r % 2 else 1]
            for n, body in bodies.items():
                print(f"{n} candidates:", flush=True)
                for name, (proc, url) in order:
                    try:
                        measured[name][str(n)] = measure(name, url, body, args, proc.pid)
                    except Exception as exc:
                        skipped[f"{name}@{n}@round{r + 1}"] = str(exc)
                        print(f"  {name} failed: {exc}")
            rounds.append(measured)
    finally:
        for proc, _ in running.values():
            stop(proc)
        if "ple-ranker-2w" in running:
            drop_bench_keys(args.redis_url)
    complete = [name for name in results if all(str(n) in m[name] for m in rounds for n in bodies)]
    rounds = [{name: m[name] for name in complete} for m in rounds]
    results = {name: {**results[name], **{str(n): median_round([m[name][str(n)] for m in rounds]) for n in bodies}}
               for name in complete}  # fmt: skip
    ceilings = {str(n): {engine: statistics.median(c[str(n)][engine] for c in ceilings_by_round)
                         for engine in ceilings_by_round[0][str(n)]} for n in bodies}  # fmt: skip
    load_after = os.getloadavg()

    rows = []
    for n in bodies:
        base = results.get("ple-ranker", {}).get(str(n), {}).get("saturation", {}).get("throughput_rps")
        for name, r in results.items():
            sat, half = r[str(n)]["saturation"], r[str(n)]["half_load"]
            ratio = f"{base / sat['throughput_rps']:.2f}x" if base and name != "ple-ranker" else ""
            rows.append([n, name, round(sat["throughput_rps"], 1), ratio, round(sat["server_cpu_ms_per_request"], 2),
                         half["p50_ms"], half["p95_ms"], half["p99_ms"]])  # fmt: skip
    print(f"\nmodel {version}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for n in bodies:
        for engine, label in (("onnxruntime", "(ORT alone)"), ("pytorch", "(PyTorch alone)")):
            rows.append([n, label, round(ceilings[str(n)][engine], 1), "", "", "", "", ""])
    if rows:
        print_table(["cands", "server", "req/s", "ours/peer", "CPU ms/req", "p50 ms @½", "p95 ms @½", "p99 ms @½"], rows)
    ratios = throughput_ratios(rounds) if rounds and complete else {}
    # The issue-20 targets: req/s as a share of the float engine alone on the same cores.
    of_engine = engine_shares(rounds, ceilings_by_round) if rounds and complete else {}
    for name, by_size in of_engine.items():
        print(f"{name} / ORT alone (median of rounds, range): "
              + ", ".join(f"{n}: {r['median']:.0%} ({r['min']:.0%}-{r['max']:.0%})" for n, r in by_size.items()))
    for ours, by_peer in ratios.items():
        for peer, by_size in by_peer.items():
            print(f"{ours} / {peer} throughput (median of rounds, range): "
                  + ", ".join(f"{n}: {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" for n, r in by_size.items()))
    path = write_result(args.out, {
        "model": str(version.relative_to(ROOT) if version.is_relative_to(ROOT) else version),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "client": "bench/loadgen.py (separate process, asyncio raw HTTP/1.1 keep-alive, loopback)",
        "seconds_per_run": args.seconds, "connections": args.connections, "rounds": args.rounds,
        "throughput_ratios": ratios, "share_of_engine_alone": of_engine, "engines_alone_runs_per_s": ceilings,
        "engines_alone_by_round": ceilings_by_round, "servers": results, "by_round": rounds, "skipped": skipped,
    })  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Where a /v1/rank request's time goes, beside bare ONNX Runtime on the same batch.

For 100, 500 and 1,000 candidates:
  bare ORT     session.run on already-encoded inputs (the floor)
  in-process   parse (the route's JSON reader + pydantic) + store + features + inference + scoring +
               JSON encode, no HTTP; alternated with bare ORT in blocks of 10 calls
  HTTP         a real `ranker-serve` process over loopback: sequential latency, then throughput
               with concurrent keep-alive clients
Prints a table and writes bench/results/rank_latency.json.

    python -m bench.rank_latency [--models models] [--name ple] [--repeat 300] [--seconds 5]
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import orjson

from bench.common import (ROOT, alternated, make_request, model_parser, newest_version, percentiles_ms, print_table,
                          served, write_result)
from service.api.jsonbody import loads
from service.app import create_app
from service.ranking.candidates import Candidates, raw_features
from service.schemas import RankRequest
from service.settings import Settings

SIZES = (100, 500, 1000)
STAGES = ("parse", "store", "features", "inference", "scoring", "encode")


def bench_in_process(models: Path, features: Path, bodies: dict[int, bytes], repeat: int) -> tuple[dict, dict]:
    """Bare session.run and the whole in-process path in alternating blocks (common.alternated):
    service calls follow each other as requests do (a bare call between two would evict the caches
    the next parse finds warm in a server)."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(models_dir=models, features_dir=features, watch="off"))
    with TestClient(app):  # runs the lifespan: loads the model and the store
        ranker = app.state.ranker
        mv, _ = app.state.registry.resolve(None, None, "u42")
        bare, service = {}, {}
        for n, body in bodies.items():
            req = parse(body)
            candidates = Candidates.of(req.candidates)
            fetched = ranker.store.fetch("u42", candidates.ids)
            shared, per_row, _, _ = raw_features(mv.transform, req, candidates, fetched.user, fetched.items)
            inputs = mv.transform.encode(n, shared, per_row).as_inputs()  # the batch the service sends
            bare_runs, service_runs = alternated(partial(mv.engine.session.run, None, inputs),
                                                 partial(served_stages, ranker, body), repeat)
            bare_times = [t for t, _ in bare_runs]
            totals = [t for t, _ in service_runs]
            per_stage = {k: [stages[k] for _, stages in service_runs] for k in STAGES}
            bare[n] = percentiles_ms(bare_times)
            service[n] = {**percentiles_ms(totals),
                          "stages_p50_ms": {k: float(np.median(v) * 1000) for k, v in per_stage.items()}}  # fmt: skip
    return bare, service


def served_stages(ranker, body: bytes) -> dict[str, float]:
    """One in-process request, as the route serves it; seconds per stage."""
    t = time.perf_counter()
    req = parse(body)
    t_parse = time.perf_counter()
    stages: dict[str, float] = {}
    result = ranker.rank(req, stages)
    t_rank = time.perf_counter()
    orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    return {**stages, "parse": t_parse - t, "encode": time.perf_counter() - t_rank}


def parse(body: bytes) -> RankRequest:
    """As the /v1/rank route parses a body: the service's JSON reader, then the schema."""
    return RankRequest.model_validate(loads(body))


async def _load(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[int, int, list[float]]:
    import httpx

    ok = failed = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker():
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - t)
                if r.status_code == 200:
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed, latencies


def bench_http(models: Path, features: Path, bodies: dict[int, bytes], repeat: int, seconds: float, concurrency: int) -> dict:
    import httpx

    out = {}
    with served(models, {"RANKER_FEATURES_DIR": str(features), "RANKER_WATCH": "off"}, log_level="warning") as server:
        url = server.url
        with httpx.Client(base_url=url, timeout=30) as client:
            for n, body in bodies.items():
                for _ in range(20):
                    client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
                times = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    r = client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                ok, failed, _ = asyncio.run(_load(url, body, concurrency, seconds))
                out[n] = {**percentiles_ms(times), "throughput_rps": ok / seconds, "failed": failed,
                          "concurrency": concurrency}  # fmt: skip
    return out


def main() -> None:
    p = model_parser(__doc__, repeat=300)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    load_before = os.getloadavg()
    bodies = {n: make_request(n, args.features) for n in SIZES}
    bare, service = bench_in_process(args.models, args.features, bodies, args.repeat)
    http = bench_http(args.models, args.features, bodies, args.repeat, args.seconds, args.concurrency)

    print(f"model {version} — p50/p95/p99 in ms; load average {load_before[0]:.2f} at start")
    rows = []
    for n in SIZES:
        rows.append([n, "bare ORT", bare[n]["p50_ms"], bare[n]["p95_ms"], bare[n]["p99_ms"], "", ""])
        rows.append([n, "in-process", service[n]["p50_ms"], service[n]["p95_ms"], service[n]["p99_ms"],
                     f"{service[n]['p50_ms'] / bare[n]['p50_ms']:.2f}x", ""])  # fmt: skip
        rows.append([n, "HTTP", http[n]["p50_ms"], http[n]["p95_ms"], http[n]["p99_ms"],
                     f"{http[n]['p50_ms'] / bare[n]['p50_ms']:.2f}x", f"{http[n]['throughput_rps']:.0f}"])  # fmt: skip
    print_table(["cands", "path", "p50", "p95", "p99", "vs ORT", "req/s"], rows)
    print("\nin-process stage medians (ms):")
    stage_names = list(service[SIZES[0]]["stages_p50_ms"])
    print_table(["cands", *stage_names], [[n, *service[n]["stages_p50_ms"].values()] for n in SIZES])
    path = write_result("rank_latency", {"model": str(version.relative_to(ROOT) if version.is_relative_to(ROOT) else version),
                                         "model_json": json.loads((version / "model.json").read_text())["hyperparameters"],
                                         "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                         "intra_op_threads": Settings().intra_op_threads,
                                         "bare_ort": bare, "in_process": service, "http": http})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

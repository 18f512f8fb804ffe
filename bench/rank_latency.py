"""Where a /v1/rank request's time goes, beside bare ONNX Runtime on the same batch.

For 100, 500 and 1,000 candidates:
  bare ORT     session.run on already-encoded inputs (the floor)
  in-process   parse (the route's JSON reader + pydantic) + store + features + inference + scoring +
               JSON encode, no HTTP; alternated with bare ORT in blocks of 10 calls
  HTTP         a real `ranker-serve` process over loopback: sequential latency (httpx, then a lean
               client whose own cost is microseconds), then throughput with concurrent keep-alive clients
  HTTP, lean vs bare, alternated
               the lean client's sequential requests and bare session.run (the service's engine
               settings, in this process, on the batch the service builds) in alternating blocks of
               10: on a shared machine the two phases above run minutes apart, this ratio does not
Prints a table and writes bench/results/rank_latency.json (or --out NAME: NAME.json).

    python -m bench.rank_latency [--models models] [--name ple] [--repeat 300] [--seconds 5] [--out NAME]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
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


def bench_in_process(models: Path, features: Path, bodies: dict[int, bytes], repeat: int) -> tuple[dict, dict, dict]:
    """Bare session.run and the whole in-process path in alternating blocks (common.alternated):
    service calls follow each other as requests do (a bare call between two would evict the caches
    the next parse finds warm in a server)."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(models_dir=models, features_dir=features, watch="off"))
    with TestClient(app):  # runs the lifespan: loads the model and the store
        ranker = app.state.ranker
        mv, _ = app.state.registry.resolve(None, None, "u42")
        bare, service, batches = {}, {}, {}
        for n, body in bodies.items():
            req = parse(body)
            candidates = Candidates.of(req.candidates)
            fetched = ranker.store.fetch("u42", candidates.ids)
            shared, per_row, _, _ = raw_features(mv.transform, req, candidates, fetched.user, fetched.items)
            inputs = batches[n] = mv.transform.encode(n, shared, per_row).as_inputs()  # the batch the service sends
            bare_runs, service_runs = alternated(partial(mv.engine.session.run, None, inputs),
                                                 partial(served_stages, ranker, body), repeat)
            bare_times = [t for t, _ in bare_runs]
            totals = [t for t, _ in service_runs]
            per_stage = {k: [stages[k] for _, stages in service_runs] for k in STAGES}
            bare[n] = percentiles_ms(bare_times)
            service[n] = {**percentiles_ms(totals),
                          "stages_p50_ms": {k: float(np.median(v) * 1000) for k, v in per_stage.items()}}  # fmt: skip
    return bare, service, batches


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


class LeanClient:
    """One keep-alive HTTP/1.1 connection sending prebuilt request bytes and reading the answer by its
    Content-Length: a client that costs microseconds, so its sequential latency is the server's.
    httpx in the same process adds ~0.5 ms per 500-candidate request (building the request, reading
    the answer), which the HTTP row's p50 includes."""

    def __init__(self, url: str):
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body)
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, self.reader.read(length)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def sequential(post, body: bytes, repeat: int) -> list[float]:
    """`repeat` timed posts of `body`, one after the other, after 20 untimed ones."""
    times = []
    for i in range(20 + repeat):
        t = time.perf_counter()
        status, text = post(body)
        if i >= 20:
            times.append(time.perf_counter() - t)
        assert status == 200, text
    return times


def bench_http(models: Path, features: Path, bodies: dict[int, bytes], repeat: int, seconds: float, concurrency: int,
               batches: dict[int, dict], onnx_path: Path) -> dict:  # fmt: skip
    import httpx

    from service.lifecycle.engine import InferenceEngine

    settings = Settings()
    engine = InferenceEngine(str(onnx_path), device="cpu", intra_op_threads=settings.intra_op_threads,
                             inter_op_threads=settings.inter_op_threads)  # the service's lone-call session
    out = {}
    with served(models, {"RANKER_FEATURES_DIR": str(features), "RANKER_WATCH": "off"}, log_level="warning") as server:
        url = server.url
        lean = LeanClient(url)
        with httpx.Client(base_url=url, timeout=30) as client:

            def with_httpx(body: bytes) -> tuple[int, bytes]:
                r = client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
                return r.status_code, r.content

            for n, body in bodies.items():
                times = sequential(with_httpx, body, repeat)
                lean_times = sequential(partial(lean.post, "/v1/rank"), body, repeat)
                bare_runs, lean_runs = alternated(partial(engine.session.run, None, batches[n]),
                                                  partial(lean.post, "/v1/rank", body), repeat)
                assert all(status == 200 for _, (status, _) in lean_runs)
                alternated_ms = {"bare_ort": percentiles_ms([t for t, _ in bare_runs]),
                                 "lean_client": percentiles_ms([t for t, _ in lean_runs])}
                ok, failed, _ = asyncio.run(_load(url, body, concurrency, seconds))
                out[n] = {**percentiles_ms(times), "lean_client": percentiles_ms(lean_times),
                          "lean_vs_bare_alternated": alternated_ms,
                          "throughput_rps": ok / seconds, "failed": failed, "concurrency": concurrency}  # fmt: skip
        lean.close()
    return out


def main() -> None:
    p = model_parser(__doc__, repeat=300)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", default="rank_latency", help="result file name under bench/results/")
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    load_before = os.getloadavg()
    bodies = {n: make_request(n, args.features) for n in SIZES}
    bare, service, batches = bench_in_process(args.models, args.features, bodies, args.repeat)
    http = bench_http(args.models, args.features, bodies, args.repeat, args.seconds, args.concurrency, batches,
                      version / "model.onnx")  # fmt: skip

    print(f"model {version} — p50/p95/p99 in ms; load average {load_before[0]:.2f} at start")
    rows = []
    for n in SIZES:
        rows.append([n, "bare ORT", bare[n]["p50_ms"], bare[n]["p95_ms"], bare[n]["p99_ms"], "", ""])
        rows.append([n, "in-process", service[n]["p50_ms"], service[n]["p95_ms"], service[n]["p99_ms"],
                     f"{service[n]['p50_ms'] / bare[n]['p50_ms']:.2f}x", ""])  # fmt: skip
        rows.append([n, "HTTP", http[n]["p50_ms"], http[n]["p95_ms"], http[n]["p99_ms"],
                     f"{http[n]['p50_ms'] / bare[n]['p50_ms']:.2f}x", f"{http[n]['throughput_rps']:.0f}"])  # fmt: skip
        lean = http[n]["lean_client"]
        rows.append([n, "HTTP, lean client", lean["p50_ms"], lean["p95_ms"], lean["p99_ms"],
                     f"{lean['p50_ms'] / bare[n]['p50_ms']:.2f}x", ""])  # fmt: skip
        pair = http[n]["lean_vs_bare_alternated"]
        rows.append([n, "bare ORT, alternated with:", pair["bare_ort"]["p50_ms"], pair["bare_ort"]["p95_ms"],
                     pair["bare_ort"]["p99_ms"], "", ""])  # fmt: skip
        lean = pair["lean_client"]
        rows.append([n, "HTTP, lean client, alternated", lean["p50_ms"], lean["p95_ms"], lean["p99_ms"],
                     f"{lean['p50_ms'] / pair['bare_ort']['p50_ms']:.2f}x", ""])  # fmt: skip
    print_table(["cands", "path", "p50", "p95", "p99", "vs ORT", "req/s"], rows)
    print("\nin-process stage medians (ms):")
    stage_names = list(service[SIZES[0]]["stages_p50_ms"])
    print_table(["cands", *stage_names], [[n, *service[n]["stages_p50_ms"].values()] for n in SIZES])
    path = write_result(args.out, {"model": str(version.relative_to(ROOT) if version.is_relative_to(ROOT) else version),
                                         "model_json": json.loads((version / "model.json").read_text())["hyperparameters"],
                                         "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                         "intra_op_threads": Settings().intra_op_threads,
                                         "bare_ort": bare, "in_process": service, "http": http})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

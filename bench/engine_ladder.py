"""Inference alone, per call, at 1 / 100 / 500 / 1,000 / 4,096 candidates, for every engine path this
machine has: CPU provider (plain run, and the bound path for comparison), and where the
onnxruntime build has CUDA: plain run with padding, IO binding, IO binding + CUDA graphs.

    python -m bench.engine_ladder [--models models] [--name ple] [--repeat 200]

Runs service.lifecycle.engine.InferenceEngine exactly as the service builds it (buckets from the settings'
defaults), on random encoded rows of the model's own feature schema; prints a table and writes
bench/results/engine_ladder_<cpu|cuda>.json. On a GPU machine, run it with a CUDA build of
onnxruntime installed (onnxruntime-gpu, the `[gpu]` extra; docs/deployment.md): the ratio "CUDA best / CPU plain" at 1,000
candidates is issue #8's GPU target (>= 5x).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, newest_version, percentiles_ms, print_table, write_result
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.engine import CUDA, InferenceEngine
from service.settings import Settings

SIZES = [1, 100, 500, 1000, 4096]
PATHS = {  # name -> InferenceEngine options
    "cpu plain": {"device": "cpu", "io_binding": "off"},
    "cpu io-binding": {"device": "cpu", "io_binding": "on"},
    "cuda plain (padded)": {"device": "cuda", "io_binding": "off"},
    "cuda io-binding": {"device": "cuda", "io_binding": "on"},
    "cuda io-binding + graph": {"device": "cuda", "io_binding": "on", "cuda_graph": True},
}


def random_inputs(transform: FeatureTransform, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    enc = transform.encode(n)
    sparse = np.stack([rng.integers(0, c, n) for c in transform.cardinalities()], axis=1) if transform.cardinalities() else enc.sparse_ids
    return {"sparse_ids": sparse.astype(np.int64), "dense": rng.normal(size=enc.dense.shape).astype(np.float32)}


def time_path(engine: InferenceEngine, batches: list[dict], repeat: int) -> dict:
    for b in batches[:5]:
        engine.run(b)
    seconds = []
    for i in range(repeat):
        t = time.perf_counter()
        engine.run(batches[i % len(batches)])
        seconds.append(time.perf_counter() - t)
    return percentiles_ms(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--name", default="ple")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    spec = ModelSpec.model_validate_json((version / "model.json").read_text())
    transform = FeatureTransform(spec.features)
    settings = Settings(models_dir=args.models, features_dir=None)
    rng = np.random.default_rng(0)
    batches = {n: [random_inputs(transform, n, rng) for _ in range(8)] for n in args.sizes}
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for name, options in PATHS.items():
        try:
            engine = InferenceEngine(str(version / "model.onnx"), intra_op_threads=settings.intra_op_threads,
                                     batch_buckets=settings.batch_buckets, **options)  # fmt: skip
        except Exception as exc:  # no CUDA in this onnxruntime build: recorded, not fatal
            results[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        if options["device"] == "cuda" and engine.provider != CUDA:
            results[name] = {"skipped": f"session fell back to {engine.provider}"}
            continue
        engine.warm_up(batches[args.sizes[0]][0], engine.buckets)
        results[name] = {"engine": engine.describe(), **{str(n): time_path(engine, batches[n], args.repeat) for n in args.sizes}}
    rows = [[name, *[r[str(n)]["p50_ms"] for n in args.sizes]] for name, r in results.items() if "skipped" not in r]
    print(f"model {version} — p50 ms per inference call; load average {load_before[0]:.2f} at start")
    print_table(["path", *[str(n) for n in args.sizes]], rows)
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
    cuda = [r for name, r in results.items() if name.startswith("cuda") and "skipped" not in r]
    ratio = None
    if cuda and "1000" in results["cpu plain"]:
        best = min(r["1000"]["p50_ms"] for r in cuda)
        ratio = results["cpu plain"]["1000"]["p50_ms"] / best
        print(f"CUDA best vs CPU plain at 1,000 candidates: {ratio:.1f}x (target >= 5x)")
    kind = "cuda" if cuda else "cpu"
    path = write_result(f"engine_ladder_{kind}", {
        "model": str(version.relative_to(ROOT) if version.is_relative_to(ROOT) else version),
        "hyperparameters": json.loads((version / "model.json").read_text())["hyperparameters"],
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "repeat": args.repeat, "results": results, "cuda_vs_cpu_at_1000": ratio,
    })  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One ONNX Runtime thread against two, per batch size: what a second thread buys a lone call and
what it costs in CPU. The basis of RANKER_WIDE_CALL_MIN_ROWS (docs/performance.md, "Small batches on
one thread with workers").

    python -m bench.ort_threads [--models models] [--name ple] [--repeat 300]

Both sessions as the engine builds them on CPU (the wide one without spinning, as under adaptive
threads; the narrow one with one thread), random rows of the model's schema, timed in alternating
blocks of 10 calls; CPU is the process's CPU time per call (both threads counted). Prints a table
and writes bench/results/ort_threads.json with the machine and its load.
"""

from __future__ import annotations

import os
import time

import numpy as np
import onnxruntime as ort

from bench.common import alternated, model_parser, newest_version, percentiles_ms, print_table, write_result
from bench.engine_ladder import random_inputs
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.engine import CPU, session_options

SIZES = (20, 50, 100, 200, 300, 500, 1000)


def timed_cpu(session: ort.InferenceSession, batch: dict, spent: list[float]):
    """A call that also adds its process CPU seconds to `spent`."""

    def call():
        start = time.process_time()
        session.run(None, batch)
        spent.append(time.process_time() - start)

    return call


def main() -> int:
    p = model_parser(__doc__, repeat=300)
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    spec = ModelSpec.model_validate_json((version / "model.json").read_bytes())
    transform = FeatureTransform(spec.features)
    path = str(version / "model.onnx")
    one = ort.InferenceSession(path, session_options(1, 1), providers=[CPU])
    two = ort.InferenceSession(path, session_options(2, 1, spin=False), providers=[CPU])
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    results, rows = {}, []
    for n in SIZES:
        batch = random_inputs(transform, n, rng)
        cpu_one: list[float] = []
        cpu_two: list[float] = []
        a, b = alternated(timed_cpu(one, batch, cpu_one), timed_cpu(two, batch, cpu_two), args.repeat)
        wall_one, wall_two = percentiles_ms([t for t, _ in a]), percentiles_ms([t for t, _ in b])
        cpu = {"one_thread": 1000 * float(np.median(cpu_one)), "two_threads": 1000 * float(np.median(cpu_two))}
        speedup, extra_cpu = wall_one["p50_ms"] / wall_two["p50_ms"], cpu["two_threads"] / cpu["one_thread"] - 1
        results[str(n)] = {"one_thread": wall_one, "two_threads": wall_two, "cpu_ms_p50": cpu,
                           "speedup_p50": speedup, "extra_cpu": extra_cpu}  # fmt: skip
        rows.append([n, wall_one["p50_ms"], wall_two["p50_ms"], f"{speedup:.2f}x", cpu["one_thread"],
                     cpu["two_threads"], f"{extra_cpu:+.0%}"])  # fmt: skip
    print(f"{version}; load average {load_before[0]:.2f} at start; p50 of one call at a time")
    print_table(["rows", "1 thread ms", "2 threads ms", "speed-up", "CPU ms, 1", "CPU ms, 2", "extra CPU"], rows)
    out = write_result("ort_threads", {"model": str(version), "repeat": args.repeat,
                                       "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                       "sizes": results})  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

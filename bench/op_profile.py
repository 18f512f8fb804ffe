"""Where one inference call's time goes, operator by operator (ONNX Runtime's own profiler), for
model versions side by side: what int8 makes faster and what it leaves in float.

    python -m bench.op_profile models/ple/1 models/ple/2 [--candidates 500] [--calls 300]

Each version's session as the service builds it on the CPU, but with one intra-op thread so the
kernel times add up to the call; random rows of the version's schema (bench.engine_ladder). Prints
microseconds per call by operator type and writes bench/results/op_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import print_table, write_result
from bench.engine_ladder import random_inputs
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec


def profile(version: Path, candidates: int, calls: int) -> dict[str, float]:
    """Microseconds per call by operator type."""
    spec = ModelSpec.model_validate_json((version / "model.json").read_bytes())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "op_profile")
    session = ort.InferenceSession(str(version / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feed = random_inputs(FeatureTransform(spec.features), candidates, np.random.default_rng(0))
    for _ in range(calls):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    return {op: us / calls for op, us in by_op.most_common()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("versions", nargs="+", type=Path, help="version folders (models/<name>/<version>)")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args()
    profiles = {}
    for version in args.versions:
        spec = json.loads((version / "model.json").read_text())
        mode = (spec.get("quantization") or {}).get("mode")
        label = f"{spec['name']}/{spec['version']} ({spec.get('precision', 'fp32')}{', ' + mode if mode else ''})"
        label = label if label not in profiles else f"{label} {version}"
        profiles[label] = profile(version, args.candidates, args.calls)
    ops = sorted({op for ops in profiles.values() for op in ops},
                 key=lambda op: -max(profile.get(op, 0) for profile in profiles.values()))  # fmt: skip
    rows = [[op, *(profiles[label].get(op, 0.0) for label in profiles)] for op in ops]
    rows.append(["total", *(sum(profile.values()) for profile in profiles.values())])
    print(f"microseconds per call at {args.candidates} candidates, one thread")
    print_table(["operator", *profiles], rows)
    path = write_result("op_profile", {"candidates": args.candidates, "calls": args.calls, "intra_op_threads": 1,
                                       "load_average_1_5_15": list(os.getloadavg()),
                                       "us_per_call_by_operator": profiles})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

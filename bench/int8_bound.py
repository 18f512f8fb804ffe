"""How far int8 could go on a model if the float passes around its MatMuls cost nothing: the bound
behind docs/performance.md's int8 section (issue #20's target: int8 >= 1.7x the float engine at 500
candidates).

The stacked experts export as 3-D batched MatMuls, each followed by a per-member bias Add and a
ReLU that ONNX Runtime does not fuse into the MatMul (it does for 2-D weights). An export that
fused them could at best make those passes free. This script times that best case: variants of
the newest float version's graph, each against its own dynamic int8 quantization (the quantizer
`ranker-quantize` uses), fp32 and int8 alternated, one call at a time:

  as exported       the graph as served
  no bias Add       every Add of a per-member bias (a (members, 1, width) constant) removed
  no bias, no ReLU  every Relu removed too

The variants compute something else: they are timings, not models.

    python -m bench.int8_bound [--models models] [--name ple] [--repeat 300] [--threads 0]

Prints a table and writes bench/results/int8_bound.json (int8_bound_<n>t.json with --threads n) with the
machine and its load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from bench.common import ROOT, alternated, newest_version, percentiles_ms, print_table, write_result
from bench.engine_ladder import random_inputs
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.engine import InferenceEngine
from training.quantize import quantize_graph

SIZES = (100, 500, 1000)
VARIANTS = {"as exported": (), "no bias Add": ("bias",), "no bias, no ReLU": ("bias", "relu")}


def is_member_bias(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> bool:
    """An Add of a (members, 1, width) constant: the stacked layers' and gates' biases."""
    if node.op_type != "Add":
        return False
    dims = [shapes[name] for name in node.input if name in shapes]
    return len(dims) == 1 and len(dims[0]) == 3 and dims[0][1] == 1


def without(model: onnx.ModelProto, drop: tuple[str, ...]) -> onnx.ModelProto:
    """The graph with the named passes removed: each dropped node's consumers read its first input."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rewire, kept = {}, []
    for node in model.graph.node:
        inputs = [rewire.get(name, name) for name in node.input]
        dropped = ("bias" in drop and is_member_bias(node, shapes)) or ("relu" in drop and node.op_type == "Relu")
        if dropped and node.output[0] not in outputs:
            rewire[node.output[0]] = next(name for name in inputs if name not in shapes)
            continue
        del node.input[:]
        node.input.extend(inputs)
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--name", default="ple")
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    spec = ModelSpec.model_validate_json((version / "model.json").read_bytes())
    transform = FeatureTransform(spec.features)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    batches = {n: random_inputs(transform, n, rng) for n in SIZES}
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for label, drop in VARIANTS.items():
            fp32, int8 = Path(tmp) / f"{len(drop)}-fp32.onnx", Path(tmp) / f"{len(drop)}-int8.onnx"
            model = without(onnx.load(str(version / "model.onnx")), drop)
            onnx.save(model, str(fp32))
            quantize_graph(fp32, int8, "dynamic", None)
            engines = [InferenceEngine(str(path), device="cpu", intra_op_threads=args.threads) for path in (fp32, int8)]
            removed = {op: sum(n.op_type == op for n in onnx.load(str(version / "model.onnx")).graph.node)
                       - sum(n.op_type == op for n in model.graph.node) for op in ("Add", "Relu")}  # fmt: skip
            results[label] = {"nodes_removed": removed, "sizes": {}}
            for n, batch in batches.items():
                a, b = alternated(lambda: engines[0].run(batch), lambda: engines[1].run(batch), args.repeat)
                f, i = percentiles_ms([t for t, _ in a]), percentiles_ms([t for t, _ in b])
                results[label]["sizes"][str(n)] = {"fp32": f, "int8": i, "speedup_p50": f["p50_ms"] / i["p50_ms"]}
                rows.append([label, n, f["p50_ms"], i["p50_ms"], f"{f['p50_ms'] / i['p50_ms']:.2f}x"])
    print(f"{version}; load average {load_before[0]:.2f} at start; p50 of one call, CPU provider, "
          f"{args.threads or 'ORT default'} intra-op threads")
    print_table(["graph", "candidates", "fp32 p50 ms", "int8 p50 ms", "int8 / fp32"], rows)
    model = version.relative_to(ROOT) if version.is_relative_to(ROOT) else version
    path = write_result("int8_bound" + (f"_{args.threads}t" if args.threads else ""), {"model": str(model), "threads": args.threads, "repeat": args.repeat,
                                       "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                       "variants": results})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

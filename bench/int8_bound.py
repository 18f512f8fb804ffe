"""How far int8 could go on a model if the float passes around its MatMuls cost nothing: the bound
behind docs/performance.md's int8 section (issue #20's target: int8 >= 1.7x the float engine at 500
candidates).

The stacked experts export as 3-D batched MatMuls, each followed by a per-member bias Add and a
ReLU that ONNX Runtime does not fuse into the MatMul (it does for 2-D weights). An export that
fused them could at best make those passes free. This script times that best case: variants of
the newest float version's graph, each against its own dynamic int8 quantization (the quantizer
`ranker-quantize` uses), fp32 and int8 alternated, one call at a time:

  as exported       the graph as served
  wide first layer  each stacked layer that reads one broadcast input (the embeddings, (1, B, d)) as
                    one (B, d) x (d, members * width) Gemm with its bias and ReLU fused, reshaped and
                    transposed back to (members, B, width): the export change the op profile
                    suggested, with the same outputs (checked)
  bias in weights   every per-member bias folded into its MatMul's weights as one more input row,
                    read from a column of ones that the embeddings' Concat appends and each hidden
                    layer passes on (one more weight column, 1 from the ones row: ReLU(1) = 1, and a
                    gate mix of rows of 1 is 1): no bias Add left, the same outputs (checked), at
                    the price of one more column in every hidden layer (129 instead of 128)
  no bias Add       every Add of a per-member bias (a (members, 1, width) constant) removed
  no bias, no ReLU  every Relu removed too

The last two compute something else: they are timings, not models. The two exact rewrites are also
timed against the graph as exported, each precision alternated with its own (would the rewrite pay
as an export?).

    python -m bench.int8_bound [--models models] [--name ple] [--repeat 300] [--threads 0] [--out NAME]

Prints a table and writes bench/results/int8_bound.json (int8_bound_<n>t.json with --threads n, NAME.json
with --out) with the machine and its load.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bench.common import ROOT, alternated, model_parser, newest_version, percentiles_ms, print_table, write_result
from bench.engine_ladder import random_inputs
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.engine import InferenceEngine
from training.quantize import quantize_graph

SIZES = (100, 500, 1000)


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


def sole_reader(model: onnx.ModelProto) -> Callable[[str, str], onnx.NodeProto | None]:
    """only_reader(tensor, op_type): the one node reading that tensor, if it is of that type; else None."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(name: str, op_type: str) -> onnx.NodeProto | None:
        nodes = readers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None

    return only_reader


def wide_first_layers(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul((1, B, d), (E, d, h)) -> Add((E, 1, h)) -> Relu as Gemm((B, d), (d, E*h), E*h) -> Relu ->
    Reshape (B, E, h) -> Transpose (E, B, h): the same numbers, with the bias and ReLU fusable."""
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info}  # fmt: skip
    inits = {init.name: init for init in model.graph.initializer}
    only_reader = sole_reader(model)

    replaced, replacement = set(), {}
    for k, matmul in enumerate(model.graph.node):
        if matmul.op_type != "MatMul":
            continue
        x, w = matmul.input
        add = only_reader(matmul.output[0], "Add")
        relu = add and only_reader(add.output[0], "Relu")
        bias = add and next((name for name in add.input if name in inits), None)
        if w not in inits or shapes.get(x, [None])[0] != 1 or relu is None or bias is None:
            continue
        weights, biases = numpy_helper.to_array(inits[w]), numpy_helper.to_array(inits[bias])
        n, d, h = weights.shape
        p = f"wide{k}_"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(weights.transpose(1, 0, 2).reshape(d, n * h)), p + "w"),
            numpy_helper.from_array(biases.reshape(n * h), p + "b"),
            numpy_helper.from_array(np.array([-1, d], np.int64), p + "x_shape"),
            numpy_helper.from_array(np.array([-1, n, h], np.int64), p + "y_shape"),
        ])  # fmt: skip
        replacement[relu.output[0]] = [
            helper.make_node("Reshape", [x, p + "x_shape"], [p + "x"]),
            helper.make_node("Gemm", [p + "x", p + "w", p + "b"], [p + "pre"]),
            helper.make_node("Relu", [p + "pre"], [p + "relu"]),
            helper.make_node("Reshape", [p + "relu", p + "y_shape"], [p + "y"]),
            helper.make_node("Transpose", [p + "y"], [relu.output[0]], perm=[1, 0, 2]),
        ]
        replaced |= {matmul.output[0], add.output[0]}
    nodes = []
    for node in model.graph.node:
        if node.output[0] not in replaced:
            nodes += replacement.get(node.output[0], [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def bias_in_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul(x, W) -> Add(b) as MatMul([x, 1], [W; b]), the 1 appended where the embeddings are
    concatenated and carried by every hidden layer (an extra unit with weight 1 on the ones row)."""
    inits = {init.name: init for init in model.graph.initializer}
    only_reader = sole_reader(model)

    def stacked(node: onnx.NodeProto) -> bool:
        return node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 3

    producers = {out: node for node in model.graph.node for out in node.output}
    first = next(node for node in model.graph.node if stacked(node))
    source = producers[first.input[0]]  # the embeddings' Concat, (1, B, d)
    assert source.op_type == "Concat", source.op_type
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((1, 1, 1), np.float32), "ones_value"),
                                    numpy_helper.from_array(np.array([1], np.int64), "ones_width")])  # fmt: skip
    ones = [helper.make_node("Shape", [source.input[0]], ["ones_lead"], start=0, end=2),
            helper.make_node("Concat", ["ones_lead", "ones_width"], ["ones_shape"], axis=0),
            helper.make_node("Expand", ["ones_value", "ones_shape"], ["ones"])]  # fmt: skip
    source.input.append("ones")
    rewire, dropped = {}, set()
    for node in model.graph.node:
        add = stacked(node) and only_reader(node.output[0], "Add")
        bias = add and next((name for name in add.input if name in inits and inits[name].dims[1:2] == [1]), None)
        if not bias:
            continue
        weights, biases = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[bias])
        folded = np.concatenate([weights, biases], axis=1)  # (n, d + 1, h)
        if only_reader(add.output[0], "Relu"):  # a hidden layer passes the 1 on
            carry = np.zeros((*folded.shape[:2], 1), np.float32)
            carry[:, -1] = 1.0
            folded = np.concatenate([folded, carry], axis=2)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(folded), node.input[1] + "_folded"))
        node.input[1] += "_folded"
        rewire[add.output[0]] = node.output[0]
        dropped.add(add.output[0])
    nodes = []
    for node in model.graph.node:
        nodes += (ones if node is source else []) + ([node] if node.output[0] not in dropped else [])
    for node in nodes:
        node.input[:] = [rewire.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # the exporter's shapes of the widened tensors are stale
    return model


EXACT = ("wide first layer", "bias in weights")  # rewrites that must keep the outputs
VARIANTS = {"as exported": lambda model: model, "wide first layer": wide_first_layers,
            "bias in weights": bias_in_weights,
            "no bias Add": partial(without, drop=("bias",)),
            "no bias, no ReLU": partial(without, drop=("bias", "relu"))}


def main() -> int:
    p = model_parser(__doc__, repeat=300)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--out", help="result file name under bench/results/ (default int8_bound, or int8_bound_<n>t)")
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    spec = ModelSpec.model_validate_json((version / "model.json").read_bytes())
    transform = FeatureTransform(spec.features)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    batches = {n: random_inputs(transform, n, rng) for n in SIZES}
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        exported = onnx.load(str(version / "model.onnx"))
        reference = None  # the exported graph's fp32 and int8 engines (VARIANTS starts with it)
        for k, (label, rewrite) in enumerate(VARIANTS.items()):
            fp32, int8 = Path(tmp) / f"{k}-fp32.onnx", Path(tmp) / f"{k}-int8.onnx"
            model = rewrite(onnx.load(str(version / "model.onnx")))
            onnx.save(model, str(fp32))
            quantize_graph(fp32, int8, "dynamic", None)
            engines = [InferenceEngine(str(path), device="cpu", intra_op_threads=args.threads) for path in (fp32, int8)]
            reference = reference or engines
            ops = Counter(node.op_type for node in model.graph.node)
            ops.subtract(Counter(node.op_type for node in exported.graph.node))
            results[label] = {"op_count_change": {op: c for op, c in ops.items() if c}, "sizes": {}}
            if label in EXACT:
                got, want = engines[0].run(batches[500]), reference[0].run(batches[500])
                results[label]["max_abs_difference"] = max(float(np.max(np.abs(got[o] - want[o]))) for o in want)
                assert results[label]["max_abs_difference"] < 1e-5, results[label]
            for n, batch in batches.items():
                a, b = alternated(lambda: engines[0].run(batch), lambda: engines[1].run(batch), args.repeat)
                f, i = percentiles_ms([t for t, _ in a]), percentiles_ms([t for t, _ in b])
                results[label]["sizes"][str(n)] = {"fp32": f, "int8": i, "speedup_p50": f["p50_ms"] / i["p50_ms"]}
                gains = ["", ""]
                if label in EXACT:  # would the rewrite pay as an export? Each precision against as exported, alternated
                    for k, precision in enumerate(("fp32", "int8")):
                        a, b = alternated(lambda: reference[k].run(batch), lambda: engines[k].run(batch), args.repeat)
                        gain = percentiles_ms([t for t, _ in a])["p50_ms"] / percentiles_ms([t for t, _ in b])["p50_ms"]
                        results[label]["sizes"][str(n)][f"{precision}_speedup_vs_exported"] = gain
                        gains[k] = f"{gain:.2f}x"
                rows.append([label, n, f["p50_ms"], i["p50_ms"], f"{f['p50_ms'] / i['p50_ms']:.2f}x", *gains])
    print(f"{version}; load average {load_before[0]:.2f} at start; p50 of one call, CPU provider, "
          f"{args.threads or 'ORT default'} intra-op threads")
    print_table(["graph", "candidates", "fp32 p50 ms", "int8 p50 ms", "int8 / fp32", "fp32 vs exported",
                 "int8 vs exported"], rows)  # fmt: skip
    shown = version.relative_to(ROOT) if version.is_relative_to(ROOT) else version
    name = args.out or "int8_bound" + (f"_{args.threads}t" if args.threads else "")
    path = write_result(name, {"model": str(shown), "threads": args.threads, "repeat": args.repeat,
                               "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                               "variants": results})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""fp32 against int8 (ranker-quantize): inference speed at 100 / 500 / 1,000 candidates and each
task's metric change, for every model name given.

    python -m bench.int8 [--models models] [--names ple census-ple kuairand-ple] [--repeat 300] [--out NAME]

RANKER_INTRA_OP_THREADS=1 times one-thread sessions (how calls run under load with worker processes).

For each name, the newest int8 version and the float version it was made from (model.json's
quantization.source_version): both sessions as the service builds them on the CPU (one call at a
time, the setting's threads), timed in alternating blocks on the same random rows of the model's
schema; runs/s is 1 / p50. The metric change per task (validation and test) comes from the int8
version's model.json, which ranker-quantize measured on the version's own rows. Prints a table,
writes bench/results/int8.json (or --out NAME: NAME.json) with the machine, its load and the threads.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from bench.common import ROOT, alternated, percentiles_ms, print_table, write_result
from bench.engine_ladder import random_inputs
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.engine import InferenceEngine
from service.settings import Settings

SIZES = (100, 500, 1000)


def newest_int8(model_dir: Path) -> tuple[ModelSpec, ModelSpec]:
    """(the newest int8 version's spec, its float source's spec)."""
    specs = sorted((ModelSpec.model_validate_json((p / "model.json").read_bytes()) for p in model_dir.iterdir()
                    if (p / "model.json").is_file()), key=lambda s: s.version)  # fmt: skip
    int8 = [s for s in specs if s.precision == "int8"]
    if not int8:
        raise SystemExit(f"{model_dir}: no int8 version (ranker-quantize {model_dir}/<version> makes one)")
    source = next(s for s in specs if s.version == int8[-1].quantization.source_version)
    return int8[-1], source


def engine(folder: Path, settings: Settings) -> InferenceEngine:
    return InferenceEngine(str(folder / "model.onnx"), device="cpu", intra_op_threads=settings.intra_op_threads)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--names", nargs="+", default=["ple"])
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--out", default="int8", help="result file name under bench/results/")
    args = p.parse_args()
    settings = Settings(models_dir=args.models, features_dir=None)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    results, speed_rows, metric_rows = {}, [], []
    for name in args.names:
        int8, fp32 = newest_int8(args.models / name)
        engines = {s.precision: engine(args.models / name / str(s.version), settings) for s in (fp32, int8)}
        transform = FeatureTransform(fp32.features)
        sizes = {}
        for n in SIZES:
            batch = random_inputs(transform, n, rng)
            a, b = alternated(lambda: engines["fp32"].run(batch), lambda: engines["int8"].run(batch), args.repeat)
            f, i = percentiles_ms([t for t, _ in a]), percentiles_ms([t for t, _ in b])
            sizes[str(n)] = {"fp32": f, "int8": i, "speedup_p50": f["p50_ms"] / i["p50_ms"]}
            speed_rows.append([name, n, 1000 / f["p50_ms"], 1000 / i["p50_ms"], f"{f['p50_ms'] / i['p50_ms']:.2f}x"])
        change = {}
        for key, before in int8.quantization.source_metrics.items():
            after = int8.metrics[key]
            metric = "auc" if "auc" in before else "mse"
            change[key] = {"metric": metric, "fp32": before[metric], "int8": after[metric]}
            metric_rows.append([name, key, metric, before[metric], after[metric], f"{after[metric] - before[metric]:+.5f}"])
        results[name] = {"fp32_version": fp32.version, "int8_version": int8.version, "mode": int8.quantization.mode,
                         "parameters_onnx_bytes": {s.precision: (args.models / name / str(s.version) / "model.onnx").stat().st_size
                                                   for s in (fp32, int8)},
                         "speed": sizes, "metrics": change}  # fmt: skip
    print(f"load average {load_before[0]:.2f} at start; runs/s = 1 / p50 of one call, CPU provider, "
          f"{settings.intra_op_threads or 'ORT default'} intra-op threads")
    print_table(["model", "candidates", "fp32 runs/s", "int8 runs/s", "int8 / fp32"], speed_rows)
    print()
    print_table(["model", "split.task", "metric", "fp32", "int8", "change"], metric_rows)
    path = write_result(args.out, {"load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                   "intra_op_threads": settings.intra_op_threads, "repeat": args.repeat,
                                   "models": results})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

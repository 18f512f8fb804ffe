"""ranker-quantize: the next version of a model, with int8 weights, if it ranks as well as its source.

    ranker-quantize models/<name>/<version> [--mode dynamic|static] [--max-auc-drop 0.001]
                    [--max-mse-increase 0.01] [--data-dir DIR]

ONNX Runtime's quantizer writes the int8 graph: `dynamic` (the default) stores the MatMul weights as
int8, one scale per weight tensor, and quantizes activations per call; `static` keeps a scale per
output unit of each weight and fixes the activations' scales from calibration rows of the training
split (QDQ format). The version's own
data is loaded again from what its model.json records (source, loader options, split seed; the
sha256 must match) and both graphs score its validation and test rows. If any task loses more than
the tolerance on either split (AUC by more than --max-auc-drop, MSE by more than --max-mse-increase
of its value), nothing is written and the command exits 1, printing the figures. Otherwise the
int8 graph is published as the model's next version (same interface, so it can take a share of
the traffic like any other), its model.json saying `precision: int8` and, under `quantization`,
the mode, the source version, the tolerance and the source's metrics on the same rows.

It also times both graphs on this machine (500 validation rows, one thread, alternated) and records
the figures under `quantization.speed`: int8's gain depends on the CPU (1.3-1.7x on the AMD EPYC
host of docs/performance.md#int8, about 1.0x on an Intel Xeon with AVX-512 there), so the command
says when int8 gains under 1.1x here. It publishes all the same: the serving machines may differ.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort

from contract.features import FeatureTransform
from contract.modelspec import EngineSpeed, ModelSpec, Quantization, sha256_file
from training.data import Dataset
from training.data.sets import load_data
from training.evaluate import format_metrics, task_metrics
from training.export import git_commit, publish
from training.train import encode

CALIBRATION_ROWS = 2048
BATCH = 8192
SPEED_ROWS, SPEED_CALLS = 500, 40  # a large request's candidates; ~1 s of calls


class QuantizationRefused(RuntimeError):
    """The int8 graph lost more than the tolerance on some task: nothing was published."""


def load_source_data(spec: ModelSpec, data_dir: Path | None) -> tuple[Dataset, Dataset, Dataset]:
    """The version's train / validation / test rows, loaded again from what model.json records."""
    recorded = spec.training_data
    if recorded.split_seed is None:
        raise ValueError(f"{spec.name}/{spec.version}: model.json records no split seed (trained before ranker-quantize "
                         "existed, or from a streamed file); retrain it to quantize it")  # fmt: skip
    dataset = load_data(recorded.source, dict(recorded.options), data_dir)
    if dataset.sha256() != recorded.sha256:
        raise ValueError(f"{spec.name}/{spec.version}: the {recorded.source} data loaded now (sha256 {dataset.sha256()[:12]}…) "
                         f"is not what trained this version ({recorded.sha256[:12]}…); pass the right --data-dir")  # fmt: skip
    return dataset.split(seed=recorded.split_seed)


def inputs(transform: FeatureTransform, part: Dataset) -> dict[str, np.ndarray]:
    return encode(transform, part).as_inputs()


def scores(session: ort.InferenceSession, spec: ModelSpec, feed: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) task outputs, in the order of spec.tasks."""
    names = [t.output for t in spec.tasks]
    n = len(next(iter(feed.values())))
    chunks = [session.run(names, {k: v[i : i + BATCH] for k, v in feed.items()}) for i in range(0, n, BATCH)]
    return np.concatenate([np.stack([c.reshape(-1) for c in chunk], axis=1) for chunk in chunks], axis=0)


def losses_past_tolerance(source: dict, quantized: dict, max_auc_drop: float, max_mse_increase: float) -> list[str]:
    """'split.task: metric a -> b' for every task whose metric got worse by more than allowed."""
    failed = []
    for key, before in source.items():
        after = quantized[key]
        if "auc" in before and before["auc"] - after["auc"] > max_auc_drop:
            failed.append(f"{key}: auc {before['auc']:.5f} -> {after['auc']:.5f}")
        if "mse" in before and after["mse"] - before["mse"] > max_mse_increase * before["mse"]:
            failed.append(f"{key}: mse {before['mse']:.6f} -> {after['mse']:.6f}")
    return failed


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("unknown" elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def engine_speed(fp32: ort.InferenceSession, int8: ort.InferenceSession, feed: dict[str, np.ndarray]) -> EngineSpeed:
    """p50 of one call of each graph on the first SPEED_ROWS rows, alternated call by call so that the
    machine's background load lands on both alike."""
    rows = {k: v[:SPEED_ROWS] for k, v in feed.items()}
    times: tuple[list[float], list[float]] = ([], [])
    for call in range(-3, SPEED_CALLS):  # three warm-up calls each
        for session, kept in ((fp32, times[0]), (int8, times[1])):
            start = time.perf_counter()
            session.run(None, rows)
            if call >= 0:
                kept.append(time.perf_counter() - start)
    fp32_ms, int8_ms = (float(np.median(kept) * 1000) for kept in times)
    return EngineSpeed(rows=len(next(iter(rows.values()))), calls=SPEED_CALLS, fp32_p50_ms=fp32_ms, int8_p50_ms=int8_ms,
                       cpu=cpu_name())  # fmt: skip


class Calibration:
    """ONNX Runtime's CalibrationDataReader over encoded training rows (static mode)."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int = 256):
        n = len(next(iter(feed.values())))
        self._batches: Iterator[dict] = ({k: v[i : i + batch] for k, v in feed.items()} for i in range(0, n, batch))

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_graph(source: Path, target: Path, mode: str, calibration: dict[str, np.ndarray] | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes and folding the quantizer wants
    if mode == "dynamic":
        # One scale per weight tensor: the stacked experts' (E, d_in, h) weights are 3-D, and ONNX
        # Runtime's integer MatMul kernels take per-channel zero points for 2-D weights only.
        quantize_dynamic(str(prepared), str(target), per_channel=False, weight_type=QuantType.QInt8)
    else:
        # QDQ keeps a scale per output unit of every expert (the last axis of a 3-D weight). Only the
        # MatMuls: a gate's -inf mask (experts it may not use) has no int8 value, and quantizing it
        # flattens every output to a constant.
        quantize_static(str(prepared), str(target), Calibration(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 2}})  # fmt: skip
    prepared.unlink()


def quantize_version(folder: Path, mode: str = "dynamic", max_auc_drop: float = 0.001, max_mse_increase: float = 0.01,
                     data_dir: Path | None = None, log=print) -> Path:  # fmt: skip
    """Publish the int8 version of models/<name>/<version>; QuantizationRefused past the tolerance."""
    spec = ModelSpec.model_validate_json((folder / "model.json").read_bytes())
    if spec.precision != "fp32":
        raise ValueError(f"{folder}: already {spec.precision} (quantize its float source, version "
                         f"{spec.quantization.source_version if spec.quantization else '?'})")  # fmt: skip
    train, val, test = load_source_data(spec, data_dir)
    transform = FeatureTransform(spec.features)
    feeds = {"validation": (inputs(transform, val), val), "test": (inputs(transform, test), test)}
    model_dir = folder.parent
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        target = staging / "model.onnx"
        calibration = inputs(transform, train.subset(np.arange(min(CALIBRATION_ROWS, len(train))))) if mode == "static" else None
        quantize_graph(folder / "model.onnx", target, mode, calibration)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions = {p: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (folder / "model.onnx", target)}
        metrics = {}
        for label, path in (("fp32", folder / "model.onnx"), ("int8", target)):
            metrics[label] = {f"{split}.{task}": values for split, (feed, part) in feeds.items()
                              for task, values in task_metrics(scores(sessions[path], spec, feed), part.labels, part.masks,
                                                               spec.tasks).items()}  # fmt: skip
        for split in feeds:
            for label in ("fp32", "int8"):
                per_task = {k.split(".", 1)[1]: v for k, v in metrics[label].items() if k.startswith(f"{split}.")}
                log(f"{split}, {label}:\n{format_metrics(per_task)}")
        speed = engine_speed(sessions[folder / "model.onnx"], sessions[target], feeds["validation"][0])
        gain = speed.fp32_p50_ms / speed.int8_p50_ms
        log(f"speed on this machine ({speed.cpu}, one thread, {speed.rows} rows, p50 of {speed.calls} calls): "
            f"fp32 {speed.fp32_p50_ms:.2f} ms, int8 {speed.int8_p50_ms:.2f} ms, {gain:.2f}x"
            + ("; int8 gains little on this CPU (under 1.1x): time it where it will serve" if gain < 1.1 else ""))  # fmt: skip
        failed = losses_past_tolerance(metrics["fp32"], metrics["int8"], max_auc_drop, max_mse_increase)
        if failed:
            raise QuantizationRefused(f"{folder}: int8 ({mode}) loses more than the tolerance (auc {max_auc_drop}, "
                                      f"mse {max_mse_increase:.0%}) on {'; '.join(failed)}; nothing published")  # fmt: skip
        record = Quantization(mode=mode, per_channel=mode == "static", source_version=spec.version,
                              tolerance={"auc": max_auc_drop, "mse": max_mse_increase}, source_metrics=metrics["fp32"],
                              speed=speed)  # fmt: skip

        def spec_for(version: int) -> ModelSpec:
            kept = {k: v for k, v in spec.metrics.items() if not k.startswith(("validation.", "test."))}
            return spec.model_copy(update={
                "version": version, "precision": "int8", "quantization": record, "metrics": {**kept, **metrics["int8"]},
                "onnx_sha256": sha256_file(target), "git_commit": git_commit(),
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            })  # fmt: skip

        return publish(staging, model_dir, spec_for)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker-quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", type=Path, help="a version folder: models/<name>/<version>")
    p.add_argument("--mode", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--max-auc-drop", type=float, default=0.001, help="per task and split, absolute (default 0.001)")
    p.add_argument("--max-mse-increase", type=float, default=0.01, help="per task and split, relative (default 0.01: 1 %%)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder of the full census / KuaiRand files, as ranker-train's")
    args = p.parse_args(argv)
    if not (args.version / "model.json").is_file():
        p.error(f"{args.version}: no model.json there (give a version folder, e.g. models/ple/3)")
    if args.max_auc_drop < 0 or args.max_mse_increase < 0:
        p.error("--max-auc-drop and --max-mse-increase must be >= 0")
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        folder = quantize_version(args.version, args.mode, args.max_auc_drop, args.max_mse_increase, args.data_dir, say)
    except QuantizationRefused as exc:
        say(f"ranker-quantize: {exc}")
        return 1
    except (OSError, ValueError) as exc:
        say(f"ranker-quantize: {exc}")
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

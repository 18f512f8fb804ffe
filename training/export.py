"""Export a trained model as a version folder: models/<name>/<version>/{model.onnx, model.json}.

The folder is built under a temporary name beside its final place, checked (ONNX Runtime must agree
with PyTorch), then renamed into place, so a reader (the service's watcher) never sees half of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from contract.features import DENSE_INPUT, SPARSE_INPUT, FeatureTransform
from contract.modelspec import DataSpec, Interface, ModelSpec, ScoringDefaults, TensorSpec, sha256_file
from training.train import TrainResult, sample_inputs

OPSET = 18
PARITY_ATOL = 1e-5


def export_onnx(model: torch.nn.Module, path: Path, example: tuple[np.ndarray, np.ndarray]) -> None:
    """ONNX with a dynamic batch axis; one named output per task (then gate weights, if asked)."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    args = tuple(torch.from_numpy(a) for a in example)
    # The exporter reports progress on stdout; keep stdout for the version folder we print.
    # Silence the exporter's notes about optional torchvision ops we never use.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export(model, path, args, batch)
    finally:
        registration_log.setLevel(level)


def _export(model, path, args, batch) -> None:
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=[SPARSE_INPUT, DENSE_INPUT],
        output_names=model.output_names,
        dynamic_shapes=({0: batch}, {0: batch}),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        optimize=True,
    )


def max_parity_error(model: torch.nn.Module, onnx_path: Path, sparse: np.ndarray, dense: np.ndarray) -> float:
    """Largest |PyTorch - ONNX Runtime| over all task outputs for one batch."""
    import onnxruntime as ort  # either build (CPU or GPU) will do; the CPU provider is used

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {SPARSE_INPUT: sparse, DENSE_INPUT: dense})
    with torch.no_grad():
        torch_out = model(torch.from_numpy(sparse), torch.from_numpy(dense))
    return max(float(np.max(np.abs(a - b.numpy()))) for a, b in zip(ort_out, torch_out))


def model_metrics(result: TrainResult, parity: float) -> dict[str, dict[str, float]]:
    """model.json's metrics: per split and task, expert utilisation per gate, extras, training."""
    return {
        **{f"{split}.{task}": m for split, tasks in result.metrics.items() for task, m in tasks.items()},
        **result.gates,
        **result.extra_metrics,
        "training": {"seconds": result.seconds, "samples_per_second": result.samples_per_second,
                     "epochs": float(len(result.history)), "best_epoch": float(result.best_epoch),
                     "world_size": float(result.world_size),
                     "parity_max_abs_error": parity},
    }  # fmt: skip


def output_specs(model) -> list[TensorSpec]:
    """One (B,) output per task, then (B, G, E) gate weights per gated level when exported."""
    specs = [TensorSpec(name=t.output, dtype="float32", shape=[-1]) for t in model.tasks]
    if model.config.gate_outputs:
        specs += [TensorSpec(name=f"gates_{j}", dtype="float32", shape=[-1, g, e])
                  for j, (g, e) in enumerate(model.gate_shapes())]  # fmt: skip
    return specs


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


class InterfaceChanged(ValueError):
    """A new version would change its model name's interface (contract.modelspec.Interface)."""


def latest_spec(model_dir: Path) -> ModelSpec | None:
    """The newest version's model.json in a model folder; versions whose model.json does not check
    out are passed over (the service cannot load them either). None for a new model."""
    try:
        versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    except OSError:
        return None
    for version in versions:
        try:
            return ModelSpec.model_validate_json((model_dir / str(version) / "model.json").read_bytes())
        except (OSError, ValueError):
            continue
    return None


def check_interface(model_dir: Path, interface: Interface) -> None:
    """InterfaceChanged when the model folder's latest version has another interface than `interface`
    (whose parts left None are not compared): a version under a name must serve that name's requests."""
    latest = latest_spec(model_dir)
    change = latest.interface().difference(interface) if latest is not None else None
    if change is not None:
        raise InterfaceChanged(
            f"--name {model_dir.name}: {model_dir}/{latest.version} has another interface than this run ({change}); "
            f"choose another --name, or pass --allow-interface-change to add it as version {latest.version + 1} anyway")


def publish(staging: Path, model_dir: Path, spec_for: Callable[[int], ModelSpec], allow_interface_change: bool = False,
            also: Callable[[ModelSpec], None] | None = None) -> Path:
    """Give a staged version folder (model.onnx in it) the next free version number, write its
    model.json (and whatever `also` writes) and move it into place in one rename: the watcher never
    sees a half-written version. InterfaceChanged, nothing published, as check_interface says."""
    while True:
        version = next_version(model_dir)
        spec = spec_for(version)
        if not allow_interface_change:
            check_interface(model_dir, spec.interface())
        (staging / "model.json").write_text(spec.model_dump_json(indent=2) + "\n")
        if also is not None:
            also(spec)
        os.chmod(staging, 0o755)
        try:
            # rename() of a directory fails if the target exists and is not empty; an empty
            # target would be replaced, so a concurrent exporter of the same version loses here.
            os.rename(staging, model_dir / str(version))
            return model_dir / str(version)
        except OSError:
            if not (model_dir / str(version)).exists():
                raise


def write_version(result: TrainResult, out: Path, name: str, allow_interface_change: bool = False) -> Path:
    """Export, check and publish a new version; returns its folder. InterfaceChanged (nothing written)
    when the model's latest version has another interface, unless `allow_interface_change`."""
    model, data = result.model, result.dataset
    model_dir = Path(out) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        onnx_path = staging / "model.onnx"
        export_onnx(model, onnx_path, sample_inputs(result, 4))
        parity = max(max_parity_error(model, onnx_path, *sample_inputs(result, n)) for n in (1, 257))
        if parity > PARITY_ATOL:
            raise RuntimeError(f"ONNX Runtime disagrees with PyTorch by {parity:.2e} (> {PARITY_ATOL})")
        transform = FeatureTransform(result.features)

        def spec_for(version: int) -> ModelSpec:
            return ModelSpec(
                name=name,
                version=version,
                family=model.family,
                hyperparameters=model.hyperparameters(),
                tasks=data.tasks,
                features=result.features,
                inputs=transform.input_specs(),
                outputs=output_specs(model),
                scoring=ScoringDefaults(weights=data.default_weights),
                training_data=DataSpec(
                    source=data.name,
                    description=data.description,
                    sha256=data.sha256(),
                    rows={"total": data.source_rows or len(data), **result.rows},
                    seed=data.seed,
                    options=data.options,
                    split_seed=result.split_seed,
                ),
                metrics=model_metrics(result, parity),
                git_commit=git_commit(),
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                onnx_sha256=sha256_file(onnx_path),
                opset=OPSET,
            )

        def write_metrics(spec: ModelSpec) -> None:
            metrics_json = {**spec.metrics, "history": result.history, "family": model.family,
                            "hyperparameters": spec.hyperparameters, "data": spec.training_data.model_dump()}  # fmt: skip
            (staging / "metrics.json").write_text(json.dumps(metrics_json, indent=2) + "\n")

        return publish(staging, model_dir, spec_for, allow_interface_change, write_metrics)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""The trained PLE as a PyTorch module, for the peers that serve PyTorch rather than ONNX.

`ranker-train` publishes only model.onnx + model.json. The module is rebuilt from model.json's
hyper-parameters with training.models.build_model, and its weights are read back from the ONNX
initializers, whose names are the state_dict's. `export_state` checks the rebuilt module against
ONNX Runtime on real rows and saves a state file; `load_model` (torch only, no onnx) rebuilds the
module from model.json and that file inside a peer's own environment.

    python bench/peers/torch_model.py models/ple/1 bench/.cache/ple-1.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# TorchServe imports this file from its model archive, in its own venv: the repository is not installed there.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from contract.features import FeatureTransform  # noqa: E402
from contract.modelspec import ModelSpec  # noqa: E402
from training.models import PLEConfig, build_model  # noqa: E402


def rebuild(version_dir: Path) -> torch.nn.Module:
    """An untrained module with the version's architecture (eval mode)."""
    spec = ModelSpec.model_validate_json((Path(version_dir) / "model.json").read_bytes())
    hp = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.hyperparameters.items() if k != "family"}
    transform = FeatureTransform(spec.features)
    model = build_model(spec.family, spec.tasks, transform.cardinalities(), transform.n_dense, PLEConfig(**hp))
    return model.eval()


def load_model(version_dir: Path, state_path: Path) -> torch.nn.Module:
    model = rebuild(version_dir)
    model.load_state_dict(torch.load(state_path, weights_only=True))
    return model


def export_state(version_dir: Path, state_path: Path) -> float:
    """Copy the ONNX weights into the module, check it against ONNX Runtime, save; returns max |diff|."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = rebuild(version_dir)
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(Path(version_dir) / "model.onnx")).graph.initializer}
    # Versions exported before the model zoo named the PLE body `levels.*` rather than `body.levels.*`.
    state = {k: torch.from_numpy(initializers.get(k, initializers.get(k.removeprefix("body."))).copy())
             for k in model.state_dict()}  # fmt: skip
    model.load_state_dict(state)
    spec = ModelSpec.model_validate_json((Path(version_dir) / "model.json").read_bytes())
    rng = np.random.default_rng(0)
    enc = FeatureTransform(spec.features).encode(
        257, per_row={"user_id": [f"u{i}" for i in rng.integers(0, 2000, 257)],
                      "video_id": [f"v{i}" for i in rng.integers(0, 3000, 257)],
                      "video_len": rng.uniform(5, 300, 257).tolist()})  # fmt: skip
    session = ort.InferenceSession(str(Path(version_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, enc.as_inputs())
    with torch.inference_mode():
        torch_out = model(torch.from_numpy(enc.sparse_ids), torch.from_numpy(enc.dense))
    error = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ort_out, torch_out))
    if error > 1e-5:
        raise SystemExit(f"rebuilt PyTorch module disagrees with model.onnx by {error:.2e}")
    Path(state_path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), state_path)
    return error


if __name__ == "__main__":
    print(f"max |torch - onnx| = {export_state(Path(sys.argv[1]), Path(sys.argv[2])):.2e}")

import json

import numpy as np
import onnxruntime as ort
import torch

from contract.features import DENSE_INPUT, SPARSE_INPUT
from contract.modelspec import ModelSpec, sha256_file
from training.export import PARITY_ATOL, write_version
from training.train import sample_inputs


def test_onnx_runtime_agrees_with_pytorch_at_batch_1_and_257(trained):
    session = ort.InferenceSession(str(trained.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 257):
        sparse, dense = sample_inputs(trained.result, n)
        ort_out = session.run(None, {SPARSE_INPUT: sparse, DENSE_INPUT: dense})
        with torch.no_grad():
            torch_out = trained.result.model(torch.from_numpy(sparse), torch.from_numpy(dense))
        assert len(ort_out) == len(torch_out) == 5
        for a, b in zip(ort_out, torch_out):
            assert a.shape == (n,)
            np.testing.assert_allclose(a, b.numpy(), atol=PARITY_ATOL, rtol=0)


def test_model_json_describes_the_model_for_the_service(trained):
    spec = ModelSpec.model_validate_json((trained.version_dir / "model.json").read_text())
    assert (spec.name, spec.version, spec.family) == ("ple", 1, "ple")
    assert spec.onnx_sha256 == sha256_file(trained.version_dir / "model.onnx")
    assert [t.name for t in spec.tasks] == ["ctr", "vtr", "vcr", "shr", "cmr"]
    assert {t.sample_space for t in spec.tasks[1:]} == {"ctr"}
    assert spec.hyperparameters["n_levels"] == 2
    assert "auc" in spec.metrics["validation.ctr"] and "mse" in spec.metrics["validation.vcr"]
    assert len(spec.training_data.sha256) == 64 and spec.training_data.seed == 3
    assert len(spec.git_commit) >= 7
    dense = [f for f in spec.features if f.kind == "dense"]
    assert all(f.std > 0 for f in dense) and any(f.mean != 0 for f in dense)
    session = ort.InferenceSession(str(trained.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
    assert [o.name for o in session.get_outputs()] == [t.output for t in spec.tasks]
    assert session.get_inputs()[0].shape[0] != 1  # dynamic batch axis


def test_a_second_export_becomes_the_next_version_with_no_staging_left(trained, tmp_path):
    first = write_version(trained.result, tmp_path, "m")
    second = write_version(trained.result, tmp_path, "m")
    assert (first.name, second.name) == ("1", "2")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
    assert json.loads((second / "model.json").read_text())["version"] == 2

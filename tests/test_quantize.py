"""ranker-quantize publishes an int8 version only when no task loses past the tolerance, and the
service loads and scores it like any other version of the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.registry import load_version
from service.settings import Settings
from training import cli, quantize
from training.quantize import QuantizationRefused, losses_past_tolerance, quantize_version


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small PLE trained by ranker-train on the simulator: models/ple/1, float weights."""
    out = tmp_path_factory.mktemp("q") / "models"
    assert cli.main(["--data", "videolog", "--model", "ple", "--impressions", "6000", "--epochs", "2", "--threads", "1",
                     "--out", str(out), "--features-out", str(out.parent / "features")]) == 0  # fmt: skip
    return out / "ple" / "1"


def test_model_json_records_what_loads_the_same_rows_again(source):
    data = ModelSpec.model_validate_json((source / "model.json").read_text()).training_data
    assert data.options["n_impressions"] == 6000 and data.split_seed == 7
    train, val, test = quantize.load_source_data(ModelSpec.model_validate_json((source / "model.json").read_text()), None)
    assert (len(train), len(val), len(test)) == (data.rows["train"], data.rows["validation"], data.rows["test"])


def test_an_int8_version_within_tolerance_is_published_and_serves(source, capsys):
    code = quantize.main([str(source), "--max-auc-drop", "0.05", "--max-mse-increase", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = source.parent / "2"
    assert out.strip() == str(folder) and "validation, int8" in err
    fp32 = ModelSpec.model_validate_json((source / "model.json").read_text())
    int8 = ModelSpec.model_validate_json((folder / "model.json").read_text())
    assert (int8.precision, int8.quantization.mode, int8.quantization.source_version) == ("int8", "dynamic", 1)
    assert int8.interface() == fp32.interface()  # may share the model's traffic
    assert int8.quantization.source_metrics["test.ctr"]["auc"] == pytest.approx(fp32.metrics["test.ctr"]["auc"], abs=1e-5)
    assert (folder / "model.onnx").stat().st_size < (source / "model.onnx").stat().st_size
    # The speed on this machine is printed and recorded (a model.json from before it still reads).
    speed = int8.quantization.speed
    assert speed.rows == min(quantize.SPEED_ROWS, fp32.training_data.rows["validation"]) and speed.calls == quantize.SPEED_CALLS
    assert f"fp32 {speed.fp32_p50_ms:.2f} ms, int8 {speed.int8_p50_ms:.2f} ms" in err and speed.cpu == quantize.cpu_name()
    older = json.loads((folder / "model.json").read_text())
    del older["quantization"]["speed"]
    assert ModelSpec.model_validate(older).quantization.speed is None

    settings = Settings(models_dir=source.parent.parent, features_dir=None, device="cpu")
    _, val, _ = quantize.load_source_data(fp32, None)
    rows = quantize.inputs(FeatureTransform(fp32.features), val.subset(np.arange(256)))
    outputs = [load_version(f, settings).engine.run(rows) for f in (source, folder)]
    for task in fp32.tasks:  # the same ranking model, to int8 rounding
        assert np.abs(outputs[0][task.output] - outputs[1][task.output]).max() < 0.05

    code = quantize.main([str(folder)])
    assert code == 2 and "already int8" in capsys.readouterr().err


def test_a_loss_past_tolerance_publishes_nothing(source):
    before = sorted(p.name for p in source.parent.iterdir())
    with pytest.raises(QuantizationRefused, match="loses more than the tolerance"):
        quantize_version(source, max_auc_drop=-1.0, log=lambda _: None)  # every task "loses" more than -1
    assert sorted(p.name for p in source.parent.iterdir()) == before  # no version, no staging left


def test_other_data_than_trained_the_version_is_refused(source, tmp_path, capsys):
    copy = tmp_path / "ple" / "1"
    copy.mkdir(parents=True)
    spec = json.loads((source / "model.json").read_text())
    spec["training_data"]["options"]["n_impressions"] = 5000
    (copy / "model.json").write_text(json.dumps(spec))
    (copy / "model.onnx").write_bytes((source / "model.onnx").read_bytes())
    assert quantize.main([str(copy)]) == 2
    assert "is not what trained this version" in capsys.readouterr().err
    assert sorted(p.name for p in copy.parent.iterdir()) == ["1"]


def test_tolerance_is_per_task_and_direction_aware():
    before = {"test.a": {"auc": 0.80}, "test.m": {"mse": 0.100}}
    assert losses_past_tolerance(before, {"test.a": {"auc": 0.7995}, "test.m": {"mse": 0.1009}}, 0.001, 0.01) == []
    assert losses_past_tolerance(before, {"test.a": {"auc": 0.81}, "test.m": {"mse": 0.09}}, 0.0, 0.0) == []  # better
    failed = losses_past_tolerance(before, {"test.a": {"auc": 0.798}, "test.m": {"mse": 0.102}}, 0.001, 0.01)
    assert [f.split(":")[0] for f in failed] == ["test.a", "test.m"]

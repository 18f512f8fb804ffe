"""The training loop and ranker-train: seeds, early stopping, task-weight schedules, config files,
expert utilisation, the MTL gain, and exports with gate outputs that the service still loads."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.lifecycle.registry import load_version
from service.settings import Settings
from training import cli
from training import config as run_config
from training.config import parse_assignment
from training.data import videolog
from training.evaluate import mtl_gain
from training.export import InterfaceChanged, write_version
from training.losses import subspace_orthogonality
from training.models import build_model, config_with
from training.train import TrainConfig, encode, run_training, validation_losses

QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def small_log():
    return videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=100, n_videos=150, n_impressions=3000, seed=4)))


def tiny(family, **overrides):
    sizes = {"expert_hidden": (8,), "bottom_hidden": (8,), "tower_hidden": (4,), "embedding_dim": 4}
    names = {k: v for k, v in {**sizes, **overrides}.items() if k in config_with(family, {}).__dataclass_fields__}
    return config_with(family, names)


def test_the_same_seed_gives_the_same_model_and_another_seed_another(small_log):
    def weights(seed):
        result = run_training(small_log, "mmoe", TrainConfig(epochs=2, batch_size=256, seed=seed), tiny("mmoe"), **QUIET)
        return result.model.state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_stops_after_patience_epochs_and_keeps_the_best(small_log):
    # lr = 0: the validation loss never improves after the first epoch
    result = run_training(small_log, "ple", TrainConfig(epochs=10, lr=0.0, patience=2), tiny("ple"), **QUIET)
    assert len(result.history) == 3 and result.best_epoch == 0

    result = run_training(small_log, "ple", TrainConfig(epochs=4, lr=3e-3, patience=1), tiny("ple"), **QUIET)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses))
    _, val, _ = small_log.split(seed=small_log.seed)
    enc = encode(FeatureTransform(result.features), val)
    assert float(validation_losses(result.model, enc, val).sum()) == pytest.approx(losses[result.best_epoch], rel=1e-5)


def test_task_weights_follow_the_configured_schedule_per_epoch(small_log):
    config = TrainConfig(epochs=3, loss_w0={"ctr": 2.0, "shr": 0.5}, loss_gamma={"ctr": 0.5, "cmr": 1.5})
    history = run_training(small_log, "shared-bottom", config, tiny("shared-bottom"), **QUIET).history
    for t, h in enumerate(history):
        assert (h["w_ctr"], h["w_vtr"], h["w_shr"]) == pytest.approx((2.0 * 0.5**t, 1.0, 0.5))
        assert h["w_cmr"] == pytest.approx(1.5**t)


def test_a_task_with_weight_zero_does_not_train_its_tower(small_log):
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, loss_w0={"vtr": 0.0})
    result = run_training(small_log, "mmoe", config, tiny("mmoe"), **QUIET)
    torch.manual_seed(0)  # the same initialisation, untrained
    fresh = build_model("mmoe", small_log.tasks, FeatureTransform(result.features).cardinalities(), 4, tiny("mmoe"))
    for trained, initial in zip(result.model.towers.mlp.weights, fresh.towers.mlp.weights):
        assert torch.equal(trained[1], initial[1])  # vtr's tower
        assert not torch.equal(trained[0], initial[0])  # ctr's tower trained


def test_the_sluice_orthogonality_penalty_joins_the_training_loss_with_its_weight(small_log, tmp_path):
    def train(weight):
        config = tiny("sluice", width=16, n_subspaces=2, orthogonality_weight=weight)
        return run_training(small_log, "sluice", TrainConfig(epochs=2, batch_size=256), config, **QUIET)

    def penalty(result):  # the unweighted penalty of the trained model over all training rows
        enc = encode(FeatureTransform(result.features), small_log)
        with torch.no_grad():
            _, subspaces = result.model.training_outputs(torch.from_numpy(enc.sparse_ids), torch.from_numpy(enc.dense))
        return float(subspace_orthogonality(subspaces))

    off, weak, strong = train(0.0), train(0.01), train(10.0)
    assert "loss_orthogonality" not in off.history[0]
    assert 0 < weak.history[0]["loss_orthogonality"] < strong.history[0]["loss_orthogonality"]
    assert not torch.equal(off.model.body.layers[0].weights[0], weak.model.body.layers[0].weights[0])
    assert penalty(strong) < 0.1 * penalty(off)  # a strong weight drives the subspaces towards orthogonal
    # the penalty stays out of the exported graph: export passes the parity check as usual
    spec = ModelSpec.model_validate_json((write_version(strong, tmp_path, "sluice") / "model.json").read_text())
    assert spec.hyperparameters["orthogonality_weight"] == 10.0
    assert spec.metrics["training"]["parity_max_abs_error"] <= 1e-5
    assert [o.name for o in spec.outputs] == [t.name for t in small_log.tasks]


def test_gate_utilisation_reports_mean_and_std_per_visible_expert(small_log):
    result = run_training(small_log, "cgc", TrainConfig(epochs=1), tiny("cgc", n_task_experts=1, n_shared_experts=1), **QUIET)
    assert set(result.gates) == {f"gates.level0.{t.name}" for t in small_log.tasks}
    ctr = result.gates["gates.level0.ctr"]  # ctr's gate sees its expert (0) and the shared one (5)
    assert set(ctr) == {"expert0.mean", "expert0.std", "expert5.mean", "expert5.std"}
    assert ctr["expert0.mean"] + ctr["expert5.mean"] == pytest.approx(1.0, abs=1e-5)
    assert run_training(small_log, "shared-bottom", TrainConfig(epochs=1), tiny("shared-bottom"), **QUIET).gates == {}


def test_mtl_gain_is_higher_is_better_for_auc_and_lower_is_better_for_mse():
    mtl = {"ctr": {"auc": 0.75}, "vcr": {"mse": 0.04}, "new": {"auc": 0.6}}
    single = {"ctr": {"auc": 0.70}, "vcr": {"mse": 0.05}}
    assert mtl_gain(mtl, single) == pytest.approx({"ctr": 0.05, "vcr": 0.01})


def test_set_values_are_parsed_as_toml():
    assert parse_assignment("model.expert_hidden=[16, 8]") == {"model": {"expert_hidden": [16, 8]}}
    assert parse_assignment("train.loss_gamma.ctr=0.9") == {"train": {"loss_gamma": {"ctr": 0.9}}}
    assert parse_assignment("run.data=census") == {"run": {"data": "census"}}
    with pytest.raises(ValueError):
        parse_assignment("epochs=3")


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


def test_cli_config_file_then_set_then_flags_and_gate_outputs_the_service_loads(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("""
[run]
data = "synthetic"
model = "ple"
[train]
epochs = 3
batch_size = 128
[train.loss_gamma]
y1 = 0.5
[model]
n_levels = 3
expert_hidden = [8]
tower_hidden = [4]
gate_outputs = true
[data.synthetic]
n = 600
d = 6
""")
    args = ["--config", str(config), "--set", "model.n_levels=2", "--set", "data.synthetic.p=0.9",
            "--epochs", "1", "--out", str(tmp_path / "models"), "--name", "syn"]  # fmt: skip
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    folder = tmp_path / "models" / "syn" / "1"
    assert stdout[-1] == str(folder)
    spec = ModelSpec.model_validate_json((folder / "model.json").read_text())
    assert spec.family == "ple" and spec.hyperparameters["n_levels"] == 2  # --set beat the file
    assert spec.hyperparameters["expert_hidden"] == [8]
    assert "p=0.9" in spec.training_data.description and "n=600" in spec.training_data.description
    assert spec.training_data.rows == {"total": 600, "train": 480, "validation": 60, "test": 60}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["history"]) == 1  # --epochs beat the file
    assert {"gates.level0.y1", "gates.level0.shared", "gates.level1.y2"} <= set(spec.metrics)
    assert [o.name for o in spec.outputs] == ["y1", "y2", "gates_0", "gates_1"]
    assert [o.shape for o in spec.outputs[2:]] == [[-1, 3, 6], [-1, 2, 6]]
    # the service loads it: inputs exactly sparse_ids/dense, the task outputs it needs present
    version = load_version(folder, Settings(device="cpu", features_dir=None))
    encoded = version.transform.encode(3)
    outputs = version.engine.run(encoded.as_inputs())
    assert outputs["y1"].shape == (3,) and outputs["gates_1"].shape == (3, 2, 6)
    np.testing.assert_allclose(outputs["gates_0"].sum(-1), 1.0, rtol=1e-5)

    # a second run against this one as the single-task baseline records the MTL gain
    code, _, err = run_cli(["--config", str(config), "--model", "mmoe", "--out", str(tmp_path / "models")], capsys)
    assert code == 2 and "n_levels" in err  # the file's n_levels is no MMoE hyper-parameter: a clear error
    assert not (tmp_path / "models" / "mmoe").exists()
    args = ["--data", "synthetic", "--set", "data.synthetic.n=600", "--set", "data.synthetic.d=6",
            "--set", "data.synthetic.p=0.9", "--model", "mmoe",
            "--epochs", "1", "--out", str(tmp_path / "models"), "--baseline-metrics", str(folder / "metrics.json")]  # fmt: skip
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    spec = ModelSpec.model_validate_json((tmp_path / "models" / "mmoe" / "1" / "model.json").read_text())
    base = json.loads((folder / "metrics.json").read_text())
    assert base["data"]["sha256"] == spec.training_data.sha256  # the same rows
    expected = base["test.y1"]["mse"] - spec.metrics["test.y1"]["mse"]
    assert spec.metrics["mtl_gain.test"]["y1"] == pytest.approx(expected)


@pytest.mark.parametrize("data, family, size", [
    ("census", "single-task", "bottom_hidden=[16]"),
    ("census", "sluice", "width=16"),
    ("kuairand", "adatt-sp", "expert_hidden=[16]"),
    ("kuairand", "customized", "task_hidden=[8]"),
])  # fmt: skip
def test_families_train_on_a_real_data_sample_and_export(data, family, size, tmp_path, capsys):
    code, stdout, err = run_cli(["--data", data, "--model", family, "--epochs", "2", "--batch-size", "128",
                                 "--set", f"data.{data}.nrows=4000", "--set", f"data.{data}.sample=true",
                                 "--set", "model.embedding_dim=4",
                                 "--set", f"model.{size}", "--out", str(tmp_path)], capsys)  # fmt: skip
    assert code == 0, err
    spec = ModelSpec.model_validate_json((tmp_path / family / "1" / "model.json").read_text())
    assert spec.training_data.source == data and spec.training_data.rows["total"] == 4000
    if data == "census":
        assert spec.metrics["test.never_married"]["auc"] > 0.9  # far above chance after 2 short epochs
    else:  # every KuaiRand task was evaluated; completion only where the duration is known
        assert {"auc"} <= set(spec.metrics["test.click"]) and spec.metrics["test.completion"]["mse"] < 0.25
        assert spec.metrics["test.completion"]["samples"] < spec.metrics["test.click"]["samples"]


def test_the_example_config_file_holds_valid_hyper_parameters():
    cfg = run_config.load(Path(__file__).parents[1] / "examples" / "train-census-ple.toml", [], {})
    assert (cfg.run.data, cfg.run.model) == ("census", "ple")
    assert cfg.model.expert_hidden == (32,) and cfg.model.tower_hidden == () and cfg.model.gate_outputs
    assert (cfg.train.numeric_encoding, cfg.train.selection) == ("piecewise", "normalized_loss")
    assert cfg.train.patience == 2 and cfg.train.loss_gamma == {"income": 1.0, "never_married": 1.0}
    with pytest.raises(ValueError, match="train.epochz=3: Unexpected keyword argument"):
        run_config.load(None, ["train.epochz=3"], {})


@pytest.mark.parametrize(
    "args, says",
    [
        (["--set", "model.n_levels=abc"], "model.n_levels='abc': Input should be a valid integer"),
        (["--set", "model.n_levels=0"], "model.n_levels=0: Input should be greater than or equal to 1"),
        (["--set", "model.n_levels=true"], "model.n_levels=True: Input should be a valid integer"),
        (["--set", "model.expert_hidden=[]"], "model.expert_hidden=(): Tuple should have at least 1 item"),
        (["--batch-size", "0"], "train.batch_size=0"),
        (["--lr", "nan"], "train.lr=nan"),
        (["--lr", "-1"], "train.lr=-1"),
        (["--set", "train.epochs=0"], "train.epochs=0"),  # --epochs 0 was refused; --set was not
        (["--set", "train.loss_w0.ctr=abc"], "train.loss_w0.ctr='abc'"),
        (["--set", "trian.lr=0.5"], "unknown section(s) ['trian']"),
        (["--set", "run.modle=mmoe"], "run.modle='mmoe': Extra inputs are not permitted"),
        (["--set", "data.videolog.foo=1"], "data.videolog.foo=1: Unexpected keyword argument"),
        (["--set", "data.videolog.seed=\"9\""], "data.videolog.seed='9': Input should be a valid integer"),
        (["--name", "a/b"], "run.name='a/b': String should match pattern"),
        (["--name", ".."], "run.name='..': String should match pattern"),
        (["--threads", "-1"], "run.threads=-1: Input should be greater than or equal to 1"),
        (["--baseline-metrics", "/nonexistent/metrics.json"], "--baseline-metrics /nonexistent/metrics.json"),
        (["--data", "census", "--data-dir", "/nonexistent"], "cannot load --data census: /nonexistent/census_income_kdd"),
        (["--data", "kuairand", "--data-dir", "/nonexistent"], "`bash scripts/fetch-data.sh [--data-dir DIR]`"),
        (["--data", "kuairand", "--data-dir", "/nonexistent"], "--set data.kuairand.sample=true"),
        (["--data", "census", "--set", "data.census.sample=1"], "data.census.sample=1: Input should be a valid boolean"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line_before_training(tmp_path, capsys, args, says):
    code, stdout, stderr = run_cli([*args, "--impressions", "2000", "--out", str(tmp_path / "models")], capsys)
    assert code == 2 and stdout == [], stderr
    assert stderr.strip().startswith("ranker-train: ") and says in stderr and "Traceback" not in stderr
    assert not (tmp_path / "models" / "ple").exists()  # nothing trained, nothing published


def test_cli_says_when_training_diverges_instead_of_failing_in_the_metrics(tmp_path, capsys):
    code, stdout, stderr = run_cli(["--lr", "1e8", "--epochs", "1", "--impressions", "2000",
                                    "--out", str(tmp_path / "models")], capsys)  # fmt: skip
    assert code == 1 and stdout == []
    assert "training diverged" in stderr and "lower the learning rate" in stderr
    assert not (tmp_path / "models" / "ple").exists()


def test_cli_refuses_another_data_sets_model_under_an_existing_name_before_reading_data(trained, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(trained.version_dir, models / "ple" / "1")  # the video ranker
    small = ["--set", "data.synthetic.n=600", "--set", "data.synthetic.d=6", "--set", "model.expert_hidden=[8]",
             "--epochs", "1", "--out", str(models)]  # fmt: skip
    # census: refused before its data is looked for (there is no --data-dir here)
    for data in (["--data", "census", "--data-dir", str(tmp_path / "none"), "--out", str(models)], ["--data", "synthetic", *small]):
        code, stdout, stderr = run_cli([*data, "--model", "ple"], capsys)
        assert code == 2 and stdout == [], stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ranker-train: --name ple: "), stderr
        assert "--allow-interface-change" in lines[0] and "without" in lines[0] and "vtr (binary, vtr)" in lines[0], lines[0]
    assert sorted(p.name for p in (models / "ple").iterdir()) == ["1"]
    code, stdout, stderr = run_cli(["--data", "synthetic", *small, "--model", "ple", "--allow-interface-change"], capsys)
    assert code == 0 and stdout[-1] == str(models / "ple" / "2"), stderr
    code, stdout, _ = run_cli(["--data", "synthetic", *small, "--model", "ple", "--name", "syn"], capsys)
    assert code == 0 and stdout[-1] == str(models / "syn" / "1")


def test_write_version_refuses_a_changed_feature_schema_unless_allowed(trained, tmp_path):
    first = tmp_path / "ple" / "1"
    shutil.copytree(trained.version_dir, first)
    spec = json.loads((first / "model.json").read_text())
    spec["features"][0]["name"] = "renamed_feature"  # same tasks: only the whole interface shows it
    (first / "model.json").write_text(json.dumps(spec))
    with pytest.raises(InterfaceChanged, match="renamed_feature"):
        write_version(trained.result, tmp_path, "ple")
    assert sorted(p.name for p in (tmp_path / "ple").iterdir()) == ["1"]  # nothing published, no staging left
    assert write_version(trained.result, tmp_path, "ple", allow_interface_change=True).name == "2"
    assert write_version(trained.result, tmp_path, "ple").name == "3"  # the same interface as 2: no question

"""The training options a tuner chooses between: numeric encodings, dropout, task balancing, model selection."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract.features import DENSE_INPUT, SPARSE_INPUT, FeatureTransform, fit_dense
from contract.modelspec import FeatureSpec, ModelSpec
from service.lifecycle.registry import load_version
from service.settings import Settings
from training.balancing import project_conflicts
from training.data import videolog
from training.export import PARITY_ATOL, write_version
from training.models import build_model, config_with
from training.train import TrainConfig, base_rate_losses, encode, run_training, sample_inputs

QUIET = dict(log=lambda _: None)
SMALL = {"expert_hidden": (8,), "tower_hidden": (4,), "embedding_dim": 4}


@pytest.fixture(scope="module")
def small_log():
    return videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=100, n_videos=150, n_impressions=3000, seed=4)))


AGE = FeatureSpec(name="age", kind="dense", source="user", default=0.0)


def test_quantile_bins_become_ids_and_piecewise_columns_rise_from_0_to_1():
    values = np.arange(100, dtype=float)  # quartile edges 0, 24.75, 49.5, 74.25, 99
    binned = fit_dense(AGE, values, "bins", bins=4)
    piecewise = fit_dense(AGE, values, "piecewise", bins=4)
    assert binned.edges == piecewise.edges == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    assert (binned.cardinality, binned.width, piecewise.width) == (7, 0, 4)

    transform = FeatureTransform([binned])
    ids = transform.encode(5, per_row={"age": [-5.0, 0.0, 30.0, 99.0, 1e6]}).sparse_ids[:, 0]
    assert ids.tolist() == [1, 2, 3, 6, 6]  # below the range, each bin, the top edge and above it
    assert transform.cardinalities() == [7] and transform.input_specs()[1].shape == [-1, 0]

    columns = FeatureTransform([piecewise]).encode(3, per_row={"age": [-5.0, 37.125, 1e6]}).dense
    np.testing.assert_allclose(columns, [[0, 0, 0, 0], [1, 0.5, 0, 0], [1, 1, 1, 1]], atol=1e-6)
    # a missing value takes the default (0.0), then the same encoding
    assert FeatureTransform([piecewise]).encode(1, per_row={"age": [None]}).dense.tolist() == [[0, 0, 0, 0]]


def test_a_constant_column_still_gets_a_bin():
    spec = fit_dense(AGE, np.full(10, 3.0), "piecewise", bins=8)
    assert len(spec.edges) == 2 and spec.width == 1


@pytest.mark.parametrize("encoding", ["bins", "piecewise"])
def test_an_encoded_model_exports_and_the_service_encodes_exactly_as_training(small_log, tmp_path, encoding):
    config = TrainConfig(epochs=1, batch_size=512, numeric_encoding=encoding, numeric_bins=8)
    result = run_training(small_log, "ple", config, config_with("ple", SMALL), **QUIET)
    assert all(f.encoding == encoding for f in result.features if f.kind == "dense")
    folder = write_version(result, tmp_path / "models", "ple")  # checks ORT against torch at batch 1 and 257
    spec = ModelSpec.model_validate_json((folder / "model.json").read_text())
    assert [f.edges for f in spec.features] == [f.edges for f in result.features]

    served = load_version(folder, Settings(models_dir=tmp_path / "models"))  # the service's own loader
    rows = small_log.subset(np.arange(64))
    ours, theirs = encode(served.transform, rows), encode(FeatureTransform(result.features), rows)
    np.testing.assert_array_equal(ours.sparse_ids, theirs.sparse_ids)
    np.testing.assert_array_equal(ours.dense, theirs.dense)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {SPARSE_INPUT: ours.sparse_ids, DENSE_INPUT: ours.dense})
    with torch.no_grad():
        expected = result.model(torch.from_numpy(ours.sparse_ids), torch.from_numpy(ours.dense))
    for a, b in zip(outputs, expected):
        np.testing.assert_allclose(a, b.numpy(), atol=PARITY_ATOL, rtol=0)


def test_dropout_acts_in_training_only_and_the_export_has_none(small_log, tmp_path):
    config = config_with("ple", {**SMALL, "dropout": 0.3, "tower_dropout": 0.2})
    result = run_training(small_log, "ple", TrainConfig(epochs=1, batch_size=512), config, **QUIET)
    sparse, dense = (torch.from_numpy(a) for a in sample_inputs(result, 32))
    model = result.model
    model.train()
    assert not torch.equal(model(sparse, dense)[0], model(sparse, dense)[0])
    model.eval()
    assert torch.equal(model(sparse, dense)[0], model(sparse, dense)[0])
    folder = write_version(result, tmp_path / "models", "ple")  # parity with ORT at batch 1 and 257
    assert "Dropout" not in {node.op_type for node in __import__("onnx").load(str(folder / "model.onnx")).graph.node}


def test_pcgrad_removes_the_conflicting_component_and_keeps_agreeing_gradients():
    g = torch.Generator().manual_seed(0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # a . b = -1: they conflict
    # a - (a.b / |b|^2) b = [0.5, 0.5]; b - (b.a / |a|^2) a = [0, 1]
    assert project_conflicts([a, b], g).tolist() == pytest.approx([0.5, 1.5])
    c = torch.tensor([1.0, 1.0])  # a . c > 0: nothing to project
    assert project_conflicts([a, c], g).tolist() == pytest.approx([2.0, 1.0])


@pytest.fixture(scope="module")
def mid_log():
    return videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=300, n_videos=400, n_impressions=20000, seed=4)))


@pytest.mark.parametrize("mode", ["uncertainty", "pcgrad"])
def test_every_balancing_mode_trains_a_model_that_beats_chance(mid_log, mode):
    config = TrainConfig(epochs=2, batch_size=256, lr=5e-3, task_balancing=mode)
    result = run_training(mid_log, "cgc", config, config_with("cgc", SMALL), **QUIET)
    assert result.metrics["validation"]["ctr"]["auc"] > 0.58  # static: 0.63 after 3 epochs
    if mode == "uncertainty":  # the learned log-variances are recorded per epoch, and they moved
        assert {f"log_var_{t.name}" for t in mid_log.tasks} <= set(result.history[-1])
        assert any(abs(result.history[-1][f"log_var_{t.name}"]) > 1e-3 for t in mid_log.tasks)


def test_uncertainty_weighting_gives_the_noisier_task_the_larger_variance():
    from training.data import synthetic

    data = synthetic.generate(synthetic.SyntheticConfig(n=4000, d=10, p=1.0, seed=0))
    data.labels[:, 1] += np.random.default_rng(0).normal(0, 3.0, len(data)).astype(np.float32)  # y2: far noisier
    config = TrainConfig(epochs=6, batch_size=128, lr=1e-2, task_balancing="uncertainty")
    result = run_training(data, "shared-bottom", config, config_with("shared-bottom", {"bottom_hidden": (16,)}), **QUIET)
    assert result.history[-1]["log_var_y2"] > result.history[-1]["log_var_y1"] + 1.0


def test_normalized_selection_weighs_each_task_by_its_base_rate_loss(small_log):
    _, val, _ = small_log.split(seed=small_log.seed)
    base = base_rate_losses(val)
    for k, task in enumerate(val.tasks):
        y = val.labels[val.masks[:, k], k]
        if task.kind == "binary":
            p = y.mean()
            assert float(base[k]) == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)), rel=1e-5)
        else:
            assert float(base[k]) == pytest.approx(y.var(), rel=1e-4)
    config = TrainConfig(epochs=4, batch_size=256, patience=1, selection="normalized_loss")
    result = run_training(small_log, "cgc", config, config_with("cgc", SMALL), **QUIET)
    scores = [h["val_score"] for h in result.history]
    assert result.best_epoch == int(np.argmin(scores)) and result.best_score == pytest.approx(min(scores))
    raw = [h[f"val_loss_{t.name}"] for h in result.history for t in small_log.tasks]
    assert scores[0] == pytest.approx(sum(raw[k] / float(base[k]) for k in range(len(small_log.tasks))), rel=1e-5)


def test_an_epoch_hook_sees_every_score_and_can_stop_the_run(small_log):
    seen = []

    def hook(epoch, row):
        seen.append((epoch, row["val_score"]))
        if epoch == 1:
            raise KeyboardInterrupt  # a tuner's pruning raises its own exception the same way

    with pytest.raises(KeyboardInterrupt):
        run_training(small_log, "mmoe", TrainConfig(epochs=5, batch_size=512), config_with("mmoe", SMALL),
                     on_epoch=hook, **QUIET)  # fmt: skip
    assert [e for e, _ in seen] == [0, 1] and all(np.isfinite(s) for _, s in seen)


def test_a_model_needs_no_change_for_encoded_numbers():
    spec = fit_dense(AGE, np.arange(50.0), "bins", bins=5)
    transform = FeatureTransform([FeatureSpec(name="c", kind="sparse", source="user", buckets=10), spec])
    model = build_model("ple", small_tasks(), transform.cardinalities(), transform.n_dense, config_with("ple", SMALL))
    enc = transform.encode(3, per_row={"c": ["a", "b", None], "age": [1.0, 20.0, 49.0]})
    assert enc.sparse_ids.shape == (3, 2) and enc.dense.shape == (3, 0)
    assert model(torch.from_numpy(enc.sparse_ids), torch.from_numpy(enc.dense))[0].shape == (3,)


def small_tasks():
    from contract.modelspec import TaskSpec

    return [TaskSpec(name="a", kind="binary", label="a", output="a")]


def test_the_averaged_weights_are_judged_kept_and_exported(small_log, tmp_path):
    plain = run_training(small_log, "mmoe", TrainConfig(epochs=2, batch_size=256, seed=3), config_with("mmoe", SMALL), **QUIET)
    config = TrainConfig(epochs=2, batch_size=256, seed=3, ema_decay=0.9)
    averaged = run_training(small_log, "mmoe", config, config_with("mmoe", SMALL), **QUIET)
    # the same steps, but what is kept is the average, not the last step's weights
    assert not torch.equal(plain.model.state_dict()["towers.mlp.weights.0"], averaged.model.state_dict()["towers.mlp.weights.0"])
    _, val, _ = small_log.split(seed=small_log.seed)
    from training.train import validation_losses

    kept = validation_losses(averaged.model, encode(FeatureTransform(averaged.features), val), val)
    best = averaged.history[averaged.best_epoch]
    assert float(kept.sum()) == pytest.approx(sum(best[f"val_loss_{t.name}"] for t in small_log.tasks), rel=1e-5)
    write_version(averaged, tmp_path / "models", "mmoe")  # the kept average exports with ORT parity


def test_averaging_keeps_a_ple_with_masked_gates_finite(small_log):
    # PLE's gate biases hold -inf for the experts a gate may not use: averaging them would give NaN
    config = TrainConfig(epochs=1, batch_size=256, ema_decay=0.5)
    result = run_training(small_log, "ple", config, config_with("ple", SMALL), **QUIET)
    assert all(np.isfinite(m["auc"]) for t, m in result.metrics["test"].items() if "auc" in m)

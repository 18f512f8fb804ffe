"""The loss path: labels outside a task's sample space are never read (NaN there is harmless), and
per-task loss weights must name tasks of the data set."""

import numpy as np
import pytest
import torch

from contract.modelspec import TaskSpec
from training import cli
from training.data import videolog
from training.losses import epoch_task_weights, masked_task_losses
from training.models import config_with
from training.train import TrainConfig, run_training

NAN = float("nan")
TASKS = [
    TaskSpec(name="ctr", kind="binary", label="click", output="ctr"),
    TaskSpec(name="vcr", kind="regression", label="ratio", output="vcr", sample_space="ctr", value_range=(0.0, 1.0)),
    TaskSpec(name="gain", kind="regression", label="unbounded", output="gain"),
]


def test_nan_labels_outside_the_sample_space_give_the_loss_and_gradient_of_any_other_label():
    masks = torch.tensor([[True, True, True], [True, True, False], [True, False, False], [False, False, False]])
    zeros = torch.tensor([[1.0, 0.2, 4.0], [0.0, 0.9, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # (B=4, K=3)
    nans = torch.where(masks, zeros, NAN)
    grads, losses = [], []
    for labels in (zeros, nans):
        logits = torch.linspace(-2, 2, 12).reshape(3, 4).requires_grad_()
        loss = masked_task_losses(logits, labels, masks, TASKS)
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append(logits.grad)
    assert torch.isfinite(losses[1]).all() and torch.isfinite(grads[1]).all()
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


@pytest.fixture(scope="module")
def tiny_log():
    config = videolog.VideoLogConfig(n_users=40, n_videos=60, n_impressions=1500, seed=1)
    return videolog.to_dataset(videolog.simulate(config))


@pytest.mark.parametrize("own_space", [True, False])
def test_training_with_nan_labels_outside_the_click_space_equals_training_with_zeros(tiny_log, own_space):
    """The sample-space loss never reads them; the naive ablation (sample_space_loss=False) counts them as 0."""
    nan_log = tiny_log.subset(np.arange(len(tiny_log)))
    nan_log.labels = np.where(nan_log.masks, nan_log.labels, np.nan).astype(np.float32)
    assert np.isnan(nan_log.labels).any() and not np.isnan(tiny_log.labels).any()
    runs = []
    for data in (tiny_log, nan_log):
        config = TrainConfig(epochs=1, batch_size=256, sample_space_loss=own_space, progress=False)
        runs.append(run_training(data, "shared-bottom", config, config_with("shared-bottom", {"bottom_hidden": (8,)}),
                                 log=lambda _: None))  # fmt: skip
    assert all(np.isfinite(v) for v in runs[1].history[0].values())
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_weights_naming_an_unknown_task_are_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"loss_gamma names unknown task\(s\) \['click'\].*\['ctr', 'vcr', 'gain'\]"):
        epoch_task_weights(TASKS, 0, {"ctr": 2.0}, {"click": 0.5})
    with pytest.raises(ValueError, match=r"loss_w0 names unknown task\(s\) \['a', 'b'\]"):
        epoch_task_weights(TASKS, 0, {"b": 1.0, "a": 1.0, "ctr": 1.0}, {})


def test_run_training_refuses_unknown_loss_weight_tasks_before_it_starts(tiny_log):
    lines = []
    with pytest.raises(ValueError, match=r"\['ctr_typo'\]"):
        run_training(tiny_log, "mmoe", TrainConfig(epochs=1, loss_w0={"ctr_typo": 2.0}), log=lines.append)
    assert lines == []  # not even split


def test_cli_refuses_unknown_loss_weight_tasks_with_exit_2_before_loading_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_data", lambda *a, **k: pytest.fail("loaded the data"))
    code = cli.main(["--data", "synthetic", "--set", "train.loss_gamma.ctr=0.9", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "ranker-train: loss_gamma names unknown task(s) ['ctr']" in err and "'y1', 'y2'" in err
    assert not any(tmp_path.iterdir())

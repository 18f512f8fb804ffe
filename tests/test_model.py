import torch

from contract.modelspec import TaskSpec
from training.losses import epoch_task_weights, masked_task_losses
from training.models import build_model
from training.models.ple import PLEConfig, ple_level

TASKS = [
    TaskSpec(name="ctr", kind="binary", label="click", output="ctr"),
    TaskSpec(name="vcr", kind="regression", label="ratio", output="vcr", sample_space="ctr", value_range=(0.0, 1.0)),
    TaskSpec(name="gain", kind="regression", label="unbounded", output="gain"),
]
CONFIG = PLEConfig(n_levels=2, n_task_experts=2, n_shared_experts=1, expert_hidden=(16, 8), tower_hidden=(4,))


def make_model(config=CONFIG):
    torch.manual_seed(0)
    return build_model("ple", TASKS, cardinalities=[10, 7], n_dense=3, config=config)


def inputs(batch):
    return torch.randint(0, 7, (batch, 2)), torch.randn(batch, 3)


def test_one_output_per_task_for_a_batch_of_one_and_many():
    model = make_model().eval()
    for batch in (1, 33):
        outputs = model(*inputs(batch))
        assert len(outputs) == len(TASKS)
        assert all(o.shape == (batch,) for o in outputs)
        ctr, vcr, _ = outputs
        assert ((ctr > 0) & (ctr < 1)).all() and ((vcr > 0) & (vcr < 1)).all()


def test_levels_have_task_and_shared_gates_and_the_last_has_no_shared_gate():
    model = make_model(PLEConfig(n_levels=3, n_task_experts=2, n_shared_experts=1, expert_hidden=(8,), tower_hidden=(4,)))
    k = len(TASKS)
    assert [len(level.gate_slot) for level in model.levels] == [k + 1, k + 1, k]
    # experts per level: 2 per task + 1 shared, each group built with its own count
    assert all(level.experts.n == 2 * k + 1 for level in model.levels)


def test_gates_see_their_task_experts_and_the_shared_ones():
    level = ple_level(d_in=6, n_tasks=2, config=CONFIG, last=False)
    # experts: [t0, t0, t1, t1, shared]; gates: task 0, task 1, shared
    expected = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(level.gate_mask, expected)
    _, weights = level(torch.randn(3, 5, 6))  # (G, B, E)
    assert torch.all(weights[~expected.unsqueeze(1).expand_as(weights)] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))


def test_each_gate_is_fed_by_its_own_input_slot():
    """Changing task 1's input changes task 1's and the shared output, never task 0's."""
    torch.manual_seed(1)
    level = ple_level(d_in=6, n_tasks=2, config=CONFIG, last=False)
    x = torch.randn(3, 4, 6)  # slots: task 0, task 1, shared
    base, _ = level(x)
    for slot, changed in ((0, {0, 2}), (1, {1, 2}), (2, {0, 1, 2})):
        y = x.clone()
        y[slot] += 1.0
        out, _ = level(y)
        moved = {g for g in range(3) if not torch.allclose(out[g], base[g])}
        assert moved == changed, f"perturbing slot {slot}"


def test_first_level_broadcasts_the_embedding_to_every_expert_and_gate():
    torch.manual_seed(2)
    level = ple_level(d_in=6, n_tasks=2, config=CONFIG, last=False)
    x = torch.randn(1, 4, 6)
    a, _ = level(x)
    b, _ = level(x.expand(3, 4, 6))
    torch.testing.assert_close(a, b)


def test_masked_loss_averages_inside_the_sample_space_and_empty_tasks_give_zero():
    logits = torch.tensor([[0.0, 2.0, -1.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]])  # (K=3, B=3)
    labels = torch.tensor([[1.0, 0.2, 4.0], [0.0, 0.9, 1.0], [1.0, 0.0, 2.0]])
    masks = torch.tensor([[True, True, False], [True, False, False], [True, False, False]])
    losses = masked_task_losses(logits, labels, masks, TASKS)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[0], labels[:, 0])
    torch.testing.assert_close(losses[0], bce)
    torch.testing.assert_close(losses[1], (torch.sigmoid(torch.tensor(0.5)) - 0.2) ** 2)  # only sample 0 counts
    assert losses[2] == 0.0 and not torch.isnan(losses).any()


def test_masked_loss_gives_no_gradient_from_outside_the_sample_space():
    logits = torch.zeros(3, 4, requires_grad=True)
    labels = torch.ones(4, 3)
    masks = torch.tensor([[True, True, True]] * 2 + [[True, False, False]] * 2)
    masked_task_losses(logits, labels, masks, TASKS).sum().backward()
    assert torch.all(logits.grad[1:, 2:] == 0) and torch.all(logits.grad[1:, :2] != 0)


def test_task_weights_follow_w0_times_gamma_to_the_epoch():
    w = [epoch_task_weights(TASKS, t, {"ctr": 2.0, "vcr": 1.0}, {"ctr": 0.5, "vcr": 1.1}) for t in range(3)]
    torch.testing.assert_close(torch.stack(w), torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.1, 1.0], [0.5, 1.21, 1.0]]))

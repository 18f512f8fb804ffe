"""Every model family: shapes (incl. a batch of one), routes, and PyTorch vs ONNX Runtime parity."""

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract.modelspec import TaskSpec
from training.export import PARITY_ATOL, export_onnx, max_parity_error
from training.losses import subspace_orthogonality
from training.models import FAMILIES, build_model, config_with
from training.models.adatt import AdaTTConfig, AdaTTLevel
from training.models.ple import MLMMoEConfig, build_ml_mmoe

TASKS = [
    TaskSpec(name="ctr", kind="binary", label="click", output="ctr"),
    TaskSpec(name="vcr", kind="regression", label="ratio", output="vcr", sample_space="ctr", value_range=(0.0, 1.0)),
    TaskSpec(name="gain", kind="regression", label="unbounded", output="gain"),
]
CARDS, N_DENSE = [10, 7], 3
SMALL = {"embedding_dim": 4, "tower_hidden": (4,), "gate_outputs": True}
SIZES = {  # small widths per family, so the parity exports stay fast
    "expert_hidden": (8, 6), "bottom_hidden": (8, 6), "shared_hidden": (8,), "task_hidden": (6,),
    "hidden": (8, 6), "width": 8,
}  # fmt: skip


def make(family, **overrides):
    """A small seeded model of the family; size fields the family lacks are skipped."""
    torch.manual_seed(0)
    own = {f.name for f in dataclasses.fields(FAMILIES[family].config())}
    wanted = {**SMALL, **SIZES, **overrides}
    return build_model(family, TASKS, CARDS, N_DENSE, config_with(family, {k: v for k, v in wanted.items() if k in own})).eval()


def inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (batch, len(CARDS)), generator=g), torch.randn(batch, N_DENSE, generator=g)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gives_one_output_per_task_for_a_batch_of_one_and_many(family):
    model = make(family)
    for batch in (1, 5):
        outputs = model(*inputs(batch))
        assert [tuple(o.shape) for o in outputs[: len(TASKS)]] == [(batch,)] * len(TASKS)
        assert model.logits(*inputs(batch)).shape == (len(TASKS), batch)
        gates = outputs[len(TASKS) :]
        assert [tuple(g.shape[1:]) for g in gates] == model.gate_shapes()
        for g in gates:  # gate weights are distributions over experts
            assert g.shape[0] == batch
            torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:2]))
        ctr, vcr, _ = outputs[:3]
        assert ((ctr > 0) & (ctr < 1)).all() and ((vcr > 0) & (vcr < 1)).all()


def test_gated_families_have_the_gates_and_experts_their_papers_describe():
    k = len(TASKS)
    shapes = {f: make(f, n_experts=3, n_task_experts=2, n_shared_experts=1).gate_shapes()
              for f in ("mmoe", "omoe", "cgc", "ple", "ml-mmoe", "adatt-sp")}  # fmt: skip
    shapes["adatt"] = make("adatt", n_task_experts=2).gate_shapes()
    assert shapes["mmoe"] == [(k, 3)]  # a gate per task over all experts
    assert shapes["omoe"] == [(1, 3)]  # one gate for all tasks
    assert shapes["cgc"] == [(k, 2 * k + 1)]  # one level, no shared gate
    assert shapes["ple"] == [(k + 1, 2 * k + 1), (k, 2 * k + 1)]
    assert shapes["ml-mmoe"] == [(k + 1, 3), (k, 3)]
    assert shapes["adatt"] == [(k, 2 * k), (k, 2 * k)]
    assert shapes["adatt-sp"] == [(k + 1, 2 * k + 1), (k, 2 * k + 1)]
    for f in ("shared-bottom", "single-task", "customized", "asymmetric", "cross-stitch", "sluice"):
        assert make(f).gate_shapes() == []


@pytest.mark.parametrize("family", ["mmoe", "omoe"])
def test_moe_gates_see_every_expert_and_read_the_embedding(family):
    model = make(family)
    (level,) = model.levels
    assert level.gate_mask.all()
    assert set(level.gate_slot.tolist()) == set(level.expert_slot.tolist()) == {0}


def perturbed_outputs(level, x, slot):
    y = x.clone()
    y[slot] += 1.0
    base, _ = level(x)
    out, _ = level(y)
    return {g for g in range(out.shape[0]) if not torch.allclose(out[g], base[g])}


def test_ml_mmoe_shares_every_expert_and_feeds_task_gates_their_own_previous_output():
    torch.manual_seed(1)
    body = build_ml_mmoe(6, 2, MLMMoEConfig(n_levels=2, n_experts=3, expert_hidden=(6,)))
    upper = body.levels[1]
    assert upper.gate_mask.all() and upper.expert_slot.tolist() == [2, 2, 2]  # experts read the shared slot
    x = torch.randn(3, 4, 6)  # slots: task 0, task 1, shared
    assert perturbed_outputs(upper, x, 0) == {0}
    assert perturbed_outputs(upper, x, 1) == {1}
    assert perturbed_outputs(upper, x, 2) == {0, 1}


@pytest.mark.parametrize("shared", [0, 2])
def test_adatt_fuses_all_experts_by_gate_plus_a_linear_residual_of_the_native_experts(shared):
    torch.manual_seed(2)
    config = AdaTTConfig(n_levels=2, n_task_experts=2, n_shared_experts=shared, expert_hidden=(5,))
    level = AdaTTLevel(6, 2, config, last=False)
    assert level.gate_mask[:2].all()  # task gates see every task's experts (and the shared ones)
    assert level.gate_mask.shape[0] == (3 if shared else 2)  # a shared fusion unit only in adatt-sp
    torch.nn.init.normal_(level.native)
    x = torch.randn(level.gate_mask.shape[0], 4, 6)
    out, weights = level(x)
    experts, _ = level.level.experts_and_gates(x)  # (E, B, h)
    for k in range(2):
        gated = torch.einsum("be,ebh->bh", weights[k], experts)
        native = sum(level.native[k, 0, i] * experts[2 * k + i] for i in range(2))
        torch.testing.assert_close(out[k], gated + native)
    if shared:
        torch.testing.assert_close(out[2], torch.einsum("be,ebh->bh", weights[2], experts))
    # task 1's input feeds task 1's experts and gate: every task sees the change through its gate
    assert perturbed_outputs(level, x, 1) >= {0, 1}


def _task_outputs_after(model, mutate):
    x = inputs(6)
    with torch.no_grad():
        before = model(*x)[: len(TASKS)]
        mutate(model)
        after = model(*x)[: len(TASKS)]
    return {k for k in range(len(TASKS)) if not torch.allclose(before[k], after[k])}


def test_single_task_shares_no_parameter_between_tasks():
    model = make("single-task").train()
    loss = model.logits(*inputs(8))[1].sum()  # task 1 only
    loss.backward()
    table = model.embedding.table.weight.grad.reshape(len(TASKS), -1, SMALL["embedding_dim"])
    assert table[1].abs().sum() > 0 and table[0].abs().sum() == 0 and table[2].abs().sum() == 0
    for p in model.body.parameters():
        assert p.grad[1].abs().sum() > 0 and p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0


def test_asymmetric_sharing_flows_only_from_earlier_to_later_tasks():
    def bump_bottom(task):
        return lambda m: m.body.bottoms.weights[0][task].add_(0.5)

    assert _task_outputs_after(make("asymmetric"), bump_bottom(1)) == {1, 2}
    assert _task_outputs_after(make("asymmetric"), bump_bottom(2)) == {2}
    assert _task_outputs_after(make("asymmetric"), bump_bottom(0)) == {0, 1, 2}


def test_customized_sharing_towers_read_the_shared_bottom_and_their_own():
    assert _task_outputs_after(make("customized"), lambda m: m.body.task.weights[0][1].add_(0.5)) == {1}
    assert _task_outputs_after(make("customized"), lambda m: m.body.shared.weights[0].add_(0.5)) == {0, 1, 2}


@pytest.mark.parametrize("family", ["cross-stitch", "sluice"])
def test_stitch_units_mix_task_columns_and_identity_units_separate_them(family):
    bump = lambda m: m.body.layers[0].weights[0][1].add_(0.5)  # noqa: E731  (task 1's first layer)
    assert _task_outputs_after(make(family), bump) == {0, 1, 2}

    separate = make(family)
    with torch.no_grad():
        for alpha in separate.body.alphas:
            alpha.copy_(torch.eye(alpha.shape[0]))
    assert _task_outputs_after(separate, bump) == {1}


def test_sluice_layer_mixing_beta_weights_each_layer_output():
    model = make("sluice")
    with torch.no_grad():
        model.body.beta.zero_()
        model.body.beta[:, 0, -1] = 1.0  # only the last layer
        h, _ = model.encode(*inputs(3))
        x = model.embedding(*inputs(3))
        for layer, alpha in zip(model.body.layers, model.body.alphas):
            x = model.body._mix_subspaces(layer(x), alpha)
    torch.testing.assert_close(h, x)


def test_subspace_orthogonality_is_zero_for_orthogonal_subspaces_and_the_frobenius_norm_otherwise():
    g = torch.zeros(2, 4, 2, 3)  # (K, B, S, d)
    g[:, :2, 0] = torch.randn(2, 2, 3)  # subspace 0 active on rows 0-1 only,
    g[:, 2:, 1] = torch.randn(2, 2, 3)  # subspace 1 on rows 2-3: G_0^T G_1 = 0
    assert subspace_orthogonality([g, g]) == 0.0
    assert subspace_orthogonality([]) == 0.0 and subspace_orthogonality([torch.randn(2, 4, 1, 6)]) == 0.0

    g = torch.randn(2, 4, 3, 5)  # three subspaces: every pair counts
    expected = sum(torch.linalg.matrix_norm(g[k, :, i].T @ g[k, :, j] / 4) ** 2
                   for k in range(2) for i in range(3) for j in range(i + 1, 3))  # fmt: skip
    torch.testing.assert_close(subspace_orthogonality([g]), expected)
    torch.testing.assert_close(subspace_orthogonality([g, 2 * g]), expected * 17)  # layers add up (1 + 2^4)


def test_sluice_hands_its_subspaces_to_the_trainer_and_the_penalty_trains_its_layers():
    model = make("sluice", n_subspaces=2).train()
    logits, subspaces = model.training_outputs(*inputs(6))
    torch.testing.assert_close(logits, model.logits(*inputs(6)))
    assert [tuple(g.shape) for g in subspaces] == [(len(TASKS), 6, 2, 4)] * 2  # width 8 = 2 subspaces of 4
    x = model.embedding(*inputs(6))
    torch.testing.assert_close(subspaces[0].flatten(2), model.body.layers[0](x))  # before the alpha mixing
    penalty = subspace_orthogonality(subspaces)
    assert penalty > 0
    penalty.backward()
    for layer in model.body.layers:  # both layers' columns are pushed towards orthogonal subspaces
        assert all(w.grad.abs().sum() > 0 for w in layer.weights)
    assert model.embedding.table.weight.grad.abs().sum() > 0
    assert model.penalty_weight() == 0.01 and make("sluice", orthogonality_weight=0.0).penalty_weight() == 0.0
    for family in ("ple", "cross-stitch"):  # no other family has a penalty
        assert make(family).training_outputs(*inputs(2))[1] == [] and make(family).penalty_weight() == 0.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_runtime_agrees_with_pytorch_at_batch_1_and_n(family, tmp_path):
    model = make(family)
    sparse, dense = (t.numpy() for t in inputs(4))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, (sparse, dense))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["sparse_ids", "dense"]
    assert [o.name for o in session.get_outputs()] == model.output_names
    for n in (1, 97):
        s, d = (t.numpy() for t in inputs(n, seed=n))
        assert s.dtype == np.int64 and d.dtype == np.float32
        assert max_parity_error(model, path, s, d) <= PARITY_ATOL

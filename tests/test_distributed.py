"""torchrun data-parallel training on 2 CPU processes (gloo) gives one normal version folder; the
training device (--device) and the process group's backend follow the hardware; the loss under
DDP is each task's masked mean over the global batch."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from contract.modelspec import ModelSpec, TaskSpec
from service.lifecycle.registry import load_version
from service.settings import Settings
from tests.conftest import BIN, stream_args
from training import cli
from training.distributed import backend_for, loss_denominators, resolve_device
from training.losses import masked_task_losses


def torchrun_2_cpus(*args: str) -> subprocess.CompletedProcess:
    """ranker-train under torchrun with 2 CPU processes (gloo, one thread each); both joined DDP."""
    run = subprocess.run([BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "-m", "training.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=600, env={"PATH": str(BIN), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(re.findall(r"rank (\d)/2: data-parallel", run.stderr)) == ["0", "1"]
    return run


def assert_ranks_in_step(stderr: str, epochs: int) -> None:
    """Each process trains on its own share (different training losses) but the gradients are
    averaged, so both hold the same model: identical validation losses every epoch."""
    lines = re.findall(r"epoch (\d+)/\d+  loss (\S+)  val loss (\S+)", stderr)
    for e in range(1, epochs + 1):
        rows = [(loss, val) for epoch, loss, val in lines if epoch == str(e)]
        assert len(rows) == 2 and rows[0][1] == rows[1][1] and rows[0][0] != rows[1][0]


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model_in_step_and_rank_0_exports(tmp_path):
    run = torchrun_2_cpus("--data", "synthetic", "--set", "data.synthetic.n=1200", "--set", "data.synthetic.d=6",
                          "--model", "mmoe", "--epochs", "2", "--batch-size", "64", "--set", "model.expert_hidden=[8]",
                          "--out", tmp_path)  # fmt: skip
    assert_ranks_in_step(run.stderr, epochs=2)
    folder = tmp_path / "mmoe" / "1"
    assert run.stdout.strip().splitlines()[-1] == str(folder)
    assert sorted(p.name for p in (tmp_path / "mmoe").iterdir()) == ["1"]
    spec = ModelSpec.model_validate_json((folder / "model.json").read_text())
    assert spec.metrics["training"]["world_size"] == 2.0


@pytest.mark.slow
def test_torchrun_streams_parquet_into_the_same_kind_of_export_as_one_process(parquet_log, tmp_path, capsys):
    _, path = parquet_log
    run = torchrun_2_cpus(*stream_args(path), "--batch-size", "128", "--out", tmp_path / "ddp")
    assert_ranks_in_step(run.stderr, epochs=1)
    assert sorted(re.findall(r"streaming (\d+) rows", run.stderr)) == ["5000", "5000"]  # every process reads the file
    assert cli.main([*stream_args(path), "--batch-size", "128", "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    folders = {"ddp": tmp_path / "ddp" / "cgc" / "1", "one": tmp_path / "one" / "cgc" / "1"}
    assert run.stdout.strip().splitlines()[-1] == str(folders["ddp"])
    ddp, one = (ModelSpec.model_validate_json((f / "model.json").read_text()) for f in folders.values())
    # the same contract: family, hyper-parameters, tasks, fitted features, tensors, data and its split
    same = ("family", "hyperparameters", "tasks", "features", "inputs", "outputs", "scoring", "training_data")
    assert {k: getattr(ddp, k) for k in same} == {k: getattr(one, k) for k in same}
    assert (ddp.metrics["training"]["world_size"], one.metrics["training"]["world_size"]) == (2.0, 1.0)
    assert set(ddp.metrics) == set(one.metrics) and ddp.metrics["test.ctr"]["auc"] > 0.5
    for folder in folders.values():  # and the service loads and runs both
        version = load_version(folder, Settings(device="cpu", features_dir=None))
        assert version.engine.run(version.transform.encode(3).as_inputs())["ctr"].shape == (3,)

def test_device_auto_trains_on_the_cpu_without_cuda_and_cuda_is_refused_with_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    assert backend_for(torch.device("cpu")) == "gloo"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    small = ["--data", "synthetic", "--set", "data.synthetic.n=400", "--set", "data.synthetic.d=4", "--model", "mmoe",
             "--set", "model.expert_hidden=[4]", "--epochs", "1", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(["--device", "cuda", *small]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA GPU" in err and not (tmp_path / "mmoe").exists()
    assert cli.main(["--device", "cpu", *small]) == 0
    out = capsys.readouterr()
    assert "training on cpu" in out.err and out.out.strip().splitlines()[-1] == str(tmp_path / "mmoe" / "1")


def test_a_cuda_process_takes_the_gpu_of_its_local_rank_and_nccl(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)] * 2 and backend_for(torch.device("cuda", 1)) == "nccl"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK 2, but only 2"):
        resolve_device("cuda")


LOSS_TASKS = [
    TaskSpec(name="ctr", kind="binary", label="click", output="ctr"),
    TaskSpec(name="vcr", kind="regression", label="ratio", output="vcr", sample_space="ctr", value_range=(0.0, 1.0)),
    TaskSpec(name="shr", kind="binary", label="share", output="shr", sample_space="ctr"),
]


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 rows, 4 per process: ctr in space everywhere; vcr 3 rows on rank 0 and 1 on rank 1; shr
    2 rows on rank 0 and none on rank 1. Labels outside a space are NaN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    masks = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0],  # rank 0
                          [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]).bool()  # rank 1
    labels = torch.where(masks, torch.rand(8, 3, generator=g).round(), float("nan"))
    return x, labels, masks


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, len(LOSS_TASKS))  # (B, 3) -> (B, K) logits


def ddp_loss_worker(rank: int, world: int, folder: str) -> None:
    """One process: its half of the global batch through DDP, the trainer's loss, backward."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        x, labels, masks = global_batch()
        share = torch.tensor_split(torch.arange(len(x)), world)[rank]  # as in_memory_batches splits a step
        model = tiny_model()
        ddp = nn.parallel.DistributedDataParallel(model)  # kept: its hooks average the gradients in backward
        logits = ddp(x[share]).T  # (K, b)
        per_task = masked_task_losses(logits, labels[share], masks[share], LOSS_TASKS,
                                      loss_denominators(masks[share], world))  # fmt: skip
        per_task.sum().backward()
        mean = per_task.detach().clone()
        dist.all_reduce(mean)
        torch.save({"loss": mean / world, "grads": [p.grad for p in model.parameters()]}, f"{folder}/rank{rank}.pt")
        del ddp  # its reducer's pending work must be gone before the group is
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()
    # Gloo's threads could still be releasing tensors while the interpreter finalises, which aborted
    # a worker now and then ("terminate called without an active exception", SIGABRT) after its
    # results were written; the results are on disk, so the process ends here.
    os._exit(0)


def test_ddp_loss_is_the_masked_mean_of_the_global_batch_when_processes_hold_different_in_space_counts(tmp_path):
    mp.spawn(ddp_loss_worker, args=(2, str(tmp_path)), nprocs=2)
    x, labels, masks = global_batch()
    model = tiny_model()
    expected = masked_task_losses(model(x).T, labels, masks, LOSS_TASKS)  # one process, the whole batch
    expected.sum().backward()
    for rank in (0, 1):
        got = torch.load(Path(tmp_path) / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], expected.detach())
        for grad, want in zip(got["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(grad, want)


@pytest.mark.slow
def test_torchrun_with_one_process_still_joins_the_group(tmp_path):
    """`torchrun --nproc_per_node 1` (a one-GPU machine) runs the process-group and DDP path too."""
    run = subprocess.run([BIN / "torchrun", "--standalone", "--nproc_per_node", "1", "-m", "training.cli", "--data", "synthetic",
                          "--set", "data.synthetic.n=600", "--set", "data.synthetic.d=6", "--model", "mmoe", "--epochs", "1",
                          "--set", "model.expert_hidden=[8]", "--out", tmp_path],
                         capture_output=True, text=True, timeout=600, env={"PATH": str(BIN), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "rank 0/1: data-parallel" in run.stderr
    spec = ModelSpec.model_validate_json((tmp_path / "mmoe" / "1" / "model.json").read_text())
    assert spec.metrics["training"]["world_size"] == 1.0

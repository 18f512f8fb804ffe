"""torchrun data-parallel training on 2 CPU processes (gloo) gives one normal version folder."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.modelspec import ModelSpec

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model_in_step_and_rank_0_exports(tmp_path):
    run = subprocess.run(
        [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "-m", "training.cli", "--data", "synthetic",
         "--set", "data.synthetic.n=1200", "--set", "data.synthetic.d=6", "--model", "mmoe", "--epochs", "2",
         "--batch-size", "64", "--set", "model.expert_hidden=[8]", "--out", tmp_path],
        capture_output=True, text=True, timeout=600, env={"PATH": str(BIN), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(re.findall(r"rank (\d)/2: data-parallel", run.stderr)) == ["0", "1"]
    # Each process trains on its own half (different training losses) but the gradients are
    # averaged, so both hold the same model: identical validation losses every epoch.
    epochs = re.findall(r"epoch (\d)/2  loss (\S+)  val loss (\S+)", run.stderr)
    for e in ("1", "2"):
        rows = [(loss, val) for epoch, loss, val in epochs if epoch == e]
        assert len(rows) == 2 and rows[0][1] == rows[1][1] and rows[0][0] != rows[1][0]
    folder = tmp_path / "mmoe" / "1"
    assert run.stdout.strip().splitlines()[-1] == str(folder)
    assert sorted(p.name for p in (tmp_path / "mmoe").iterdir()) == ["1"]
    spec = ModelSpec.model_validate_json((folder / "model.json").read_text())
    assert spec.metrics["training"]["world_size"] == 2.0

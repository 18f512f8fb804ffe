"""The experiments package: the whole report path at quick size, the run cache, Eq. 11's sign,
and the naive-loss switch the loss ablation relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from contract.features import FeatureTransform
from experiments.runner import Outcome, Run, Runner, gain, paired_gains
from training.data import videolog
from training.train import TrainConfig, encode, run_training

EXPERIMENTS = ["synthetic", "census", "kuairand", "utilization", "loss", "levels"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    run = subprocess.run([sys.executable, "-m", "experiments", "all", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_all_six_experiments_land_in_one_report_with_their_figures(quick_report):
    report = (quick_report / "experiments.md").read_text()
    # --quick reads the committed samples: it runs on a clone without the full data files
    assert "census_income_kdd in datasets/samples/" in report and "tsv in datasets/samples/" in report
    for n, name in enumerate(EXPERIMENTS, start=1):
        assert f"## {n}. " in report
        assert f"python -m experiments {name} --quick" in report
    linked = [line.split("(", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(linked) >= 6
    for link in linked:
        assert (quick_report / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    # Every table row has as many cells as its header (a broken table renders as text).
    for block in report.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            assert len({line.count("|") for line in lines}) == 1, block


def test_runs_are_kept_and_a_rerun_trains_nothing(quick_report):
    before = {p.name: p.read_text() for p in (quick_report / "data").glob("*.jsonl")}
    assert set(before) >= {f"{n}.jsonl" for n in ("synthetic", "census", "kuairand", "loss", "levels", "utilization")}
    rows = [json.loads(line) for text in before.values() for line in text.splitlines()]
    assert all(set(r["test"]) and r["seconds"] >= 0 for r in rows)
    run = subprocess.run([sys.executable, "-m", "experiments", "census", "loss", "--quick", "--out", str(quick_report)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert {p.name: p.read_text() for p in (quick_report / "data").glob("*.jsonl")} == before
    assert "seed" not in run.stdout  # a trained run prints "... seed N: metrics"; cached ones print nothing


def test_unknown_experiment_is_refused():
    run = subprocess.run([sys.executable, "-m", "experiments", "nope"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown experiment" in run.stderr


def test_the_runner_resumes_from_its_file(tmp_path):
    run = Run.of("synthetic", "shared-bottom", 3, data_options={"n": 600, "d": 8, "p": 0.5, "seed": 3}, train={"epochs": 1})
    first = Runner("t", directory=tmp_path, log=lambda _: None).run(run)
    again = Runner("t", directory=tmp_path, log=lambda _: None).run(run)
    assert again.test == first.test and again.seconds == first.seconds
    assert len((tmp_path / "data" / "t.jsonl").read_text().splitlines()) == 1


def test_runs_trained_in_parallel_processes_score_as_they_do_one_at_a_time(tmp_path):
    runs = [Run.of("synthetic", family, 1, data_options={"n": 600, "d": 8, "p": 0.5, "seed": 1}, train={"epochs": 1})
            for family in ("shared-bottom", "mmoe", "single-task")]  # fmt: skip
    parallel = Runner("t", directory=tmp_path / "a", log=lambda _: None, jobs=2)
    parallel.prefetch([*runs, runs[0]])  # a run asked for twice trains once
    assert len((tmp_path / "a" / "data" / "t.jsonl").read_text().splitlines()) == 3
    one_by_one = Runner("t", directory=tmp_path / "b", log=lambda _: None)
    for run in runs:
        assert parallel.run(run).test == one_by_one.run(run).test


def outcome(seed: int, **test) -> Outcome:
    return Outcome(run=Run.of("d", "f", seed), test=test, validation={}, gates={}, seconds=0.0, epochs=1, parameters=1)


def test_mtl_gain_is_positive_when_the_model_is_better():
    single = outcome(0, a={"auc": 0.80}, m={"mse": 0.50})
    better = outcome(0, a={"auc": 0.85}, m={"mse": 0.40})
    assert gain(better, single, "a") == pytest.approx(0.05)
    assert gain(better, single, "m") == pytest.approx(0.10)
    worse = [outcome(1, a={"auc": 0.70}), outcome(0, a={"auc": 0.79})]
    singles = [outcome(0, a={"auc": 0.80}), outcome(1, a={"auc": 0.75})]
    assert paired_gains(worse, singles, "a") == pytest.approx([-0.05, -0.01])  # paired by seed, not by position


def test_the_naive_loss_pulls_after_click_predictions_towards_zero():
    """sample_space_loss=False trains on every impression with labels 0 outside the click space,
    so the share/comment/view predictions fall; the default keeps them in their own space."""
    log = videolog.simulate(videolog.VideoLogConfig(n_users=200, n_videos=300, n_impressions=6000, seed=3))
    data = videolog.to_dataset(log)
    means = {}
    for own_space in (True, False):
        torch.manual_seed(0)
        result = run_training(data, "shared-bottom", TrainConfig(epochs=3, batch_size=256, sample_space_loss=own_space),
                              log=lambda _: None)  # fmt: skip
        enc = encode(FeatureTransform(result.features), data)
        with torch.no_grad():
            out = result.model(torch.from_numpy(enc.sparse_ids), torch.from_numpy(enc.dense))
        means[own_space] = {t.name: float(out[k].mean()) for k, t in enumerate(data.tasks)}
        assert result.metrics["test"]["vtr"]["samples"] < len(data) * 0.5  # metrics stay in the click space
    for task in ("vtr", "vcr"):
        assert means[False][task] < means[True][task] * 0.8, (task, means)


def test_the_command_refuses_a_bad_out_or_threads_in_one_line_and_reports_into_a_new_folder(tmp_path, capsys):
    from experiments.__main__ import main

    (tmp_path / "a-file").write_text("")
    for args in (["report", "--threads", "0"], ["report", "--out", str(tmp_path / "a-file")]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and "error: --" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "new" / "reports")]) == 0
    assert (tmp_path / "new" / "reports" / "experiments.md").is_file()


def test_paired_comparisons_separate_a_steady_gain_from_noise():
    from experiments.stats import paired

    steady = paired([0.951, 0.952, 0.950, 0.953, 0.951], [0.949, 0.950, 0.948, 0.951, 0.949])  # +0.002 every seed
    assert steady.mean == pytest.approx(0.002) and steady.wins == 5 and steady.verdict() == "better"
    assert steady.low > 0 and steady.p_value < 0.001
    noisy = paired([0.951, 0.947, 0.953, 0.946, 0.950], [0.949, 0.950, 0.948, 0.951, 0.949])
    assert noisy.verdict() == "no significant difference" and noisy.low < 0 < noisy.high
    assert paired([1.0, 2.0], [2.0, 4.0]).verdict() == "no significant difference"  # 2 seeds: too few to say
    with pytest.raises(ValueError):
        paired([1.0], [2.0])

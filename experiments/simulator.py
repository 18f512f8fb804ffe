"""Experiment 9: the video simulator at one million impressions: PLE's MTL gain on its five tasks.

The simulator (training.data.videolog) is the service's own data: CTR on every impression, VTR,
VCR (regression), SHR and CMR only after a click. At a million impressions the sparse post-click
tasks have enough positives to tell models apart; each family keeps its default sizes and one
recipe, seeds 0-4, and every gain is paired by seed (Eq. 11) and tested (stats.py).
"""

from __future__ import annotations

from experiments.context import Context
from experiments.report import gain_cells, metric_cells, metric_names, seconds, table
from experiments.runner import Outcome, Run, paired_gains
from experiments.stats import paired

TITLE = "The simulator at one million impressions: MTL gain on every task"
FAMILIES = ["single-task", "mmoe", "ple"]
TASKS = ["ctr", "vtr", "vcr", "shr", "cmr"]
# The reviewer's first baseline, one LightGBM per task with common settings (not tuned: at a million
# rows a study per task would cost more than the networks' whole runs); early stopping on validation.
LIGHTGBM = {"num_leaves": 63, "learning_rate": 0.1, "min_child_samples": 50, "feature_fraction": 0.8,
            "bagging_fraction": 0.8, "lambda_l2": 1.0, "cat_smooth": 10.0}  # fmt: skip


def plan(ctx: Context) -> tuple[dict, dict]:
    if ctx.quick:
        return {"n_users": 300, "n_videos": 400, "n_impressions": 4000}, {"epochs": 1, "batch_size": 256}
    return {"n_impressions": 1_000_000}, {"epochs": 4, "batch_size": 1024, "lr": 3e-3, "patience": 1,
                                          "selection": "normalized_loss"}  # fmt: skip


def run(ctx: Context) -> str:
    data, train = plan(ctx)
    runner = ctx.runner("simulator")
    planned = {f: [Run.of("videolog", f, seed, data_options=data, train=train) for seed in ctx.seeds] for f in FAMILIES}
    planned["lightgbm"] = [Run.of("videolog", "lightgbm", seed, data_options=data, model={t: LIGHTGBM for t in TASKS})
                           for seed in ctx.seeds]  # fmt: skip
    runner.prefetch(r for runs in planned.values() for r in runs)
    results: dict[str, list[Outcome]] = {f: runner.run_all(runs) for f, runs in planned.items()}
    singles = results["single-task"]
    rows = [[f, *metric_cells(results[f], TASKS)] for f in [*FAMILIES, "lightgbm"]]
    gains = [[f, *gain_cells(results[f], singles, TASKS)] for f in FAMILIES if f != "single-task"]
    tests = []
    for f in ("ple", "mmoe"):
        for t in TASKS:
            g = paired_gains(results[f], singles, t)
            p = paired(g, [0.0] * len(g))
            tests.append([f"{f} - single-task", t, p.text(4), p.verdict()])
    for t in TASKS:  # positive: PLE better (MSE compared as -MSE), as Eq. 11 does
        g = paired_gains(results["ple"], results["lightgbm"], t)
        p = paired(g, [0.0] * len(g))
        tests.append(["ple - lightgbm", t, p.text(4), p.verdict()])
    return "\n\n".join([
        f"Data: `training.data.videolog`, {data} (80/10/10 split; post-click tasks measured after a click). "
        f"Recipe: {train}, each family's default sizes; seeds {list(ctx.seeds)}. LightGBM: one model per task, {LIGHTGBM}, "
        f"early stopping on validation, not tuned. {seconds([o for rs in results.values() for o in rs])}.",
        "Test metrics, mean ± std over seeds (AUC higher is better, VCR's MSE lower):",
        table(["model", *metric_names(singles[0], TASKS)], rows),
        "MTL gain over single-task (Eq. 11, paired by seed; positive = better):",
        table(["model", *TASKS], gains),
        "Is each gain different from 0 (paired over seeds)?",
        table(["comparison", "task", "gain", "verdict at 5 %"], tests),
    ])  # fmt: skip

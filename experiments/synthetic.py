"""Experiment 1: MTL gain against task correlation on the MMoE paper's synthetic data (Sec. 3.2),
as in the PLE paper's Sec. 5.2: for each cosine p of the two tasks' weight vectors, every model's
test MSE per task and its gain over single-task (paired by seed; the data is regenerated per seed).

Sizes as the MMoE paper's synthetic experiment (Sec. 4.3): 8 experts of one 16-unit layer for
OMoE and MMoE, towers of one 8-unit layer, 10,000 training rows; correlations 0.5 and 1 of the
paper's 0.5, 0.9 and 1 (0.9 left out for the machine's budget), and 0; the gated PLE models get the same 8 experts per level (2 per task + 4 shared), the
shared-bottom 128 units (as many as the 8 experts together), single-task 64 per task.
"""

from __future__ import annotations

import numpy as np

from experiments import plots
from experiments.context import Context
from experiments.report import gain_cells, metric_cells, pm, seconds, table
from experiments.runner import Run, load_dataset, mean_std, paired_gains

TITLE = "Synthetic data: MTL gain against task correlation"
FAMILIES = ["single-task", "shared-bottom", "omoe", "mmoe", "cgc", "ple"]
TASKS = ["y1", "y2"]
TOWER = {"tower_hidden": (8,)}
SIZES = {
    "single-task": {"bottom_hidden": (64,), **TOWER},
    "shared-bottom": {"bottom_hidden": (128,), **TOWER},
    "omoe": {"n_experts": 8, "expert_hidden": (16,), **TOWER},
    "mmoe": {"n_experts": 8, "expert_hidden": (16,), **TOWER},
    "cgc": {"n_task_experts": 2, "n_shared_experts": 4, "expert_hidden": (16,), **TOWER},
    "ple": {"n_levels": 2, "n_task_experts": 2, "n_shared_experts": 4, "expert_hidden": (16,), **TOWER},
}


def plan(ctx: Context) -> tuple[list[float], list[str], dict, dict]:
    if ctx.quick:
        return [0.0, 1.0], ["single-task", "mmoe", "ple"], {"n": 1500, "d": 20}, {"epochs": 2, "batch_size": 256}
    return ([0.0, 0.5, 1.0], FAMILIES, {"n": 20_000, "d": 100, "train_rows": 10_000},
            {"epochs": 60, "batch_size": 256, "lr": 3e-3, "patience": 8})  # fmt: skip


def run(ctx: Context) -> str:
    ps, families, data, train = plan(ctx)
    runner = ctx.runner("synthetic")
    planned = {
        (p, family): [Run.of("synthetic", family, seed, data_options={**data, "p": p, "seed": seed}, model=SIZES[family],
                             train=train) for seed in ctx.seeds]  # fmt: skip
        for p in ps
        for family in families
    }
    runner.prefetch(r for runs in planned.values() for r in runs)
    results = {cell: runner.run_all(runs) for cell, runs in planned.items()}
    rows, correlations = [], {}
    for p in ps:
        labels = [load_dataset("synthetic", Run.of("synthetic", "", 0, data_options={**data, "p": p, "seed": s}).data_options).labels
                  for s in ctx.seeds]  # fmt: skip
        correlations[p] = mean_std(np.corrcoef(y[:, 0], y[:, 1])[0, 1] for y in labels)
        singles = results[(p, "single-task")]
        for family in families:
            cells = gain_cells(results[(p, family)], singles, TASKS) if family != "single-task" else ["", ""]
            rows.append([f"{p:g}", family, *metric_cells(results[(p, family)], TASKS), *cells])
    mtl = [f for f in families if f != "single-task"]
    series = {}
    for family in mtl:
        per_p = [np.mean([paired_gains(results[(p, family)], results[(p, "single-task")], t) for t in TASKS], axis=0)
                 for p in ps]  # the two tasks' mean gain, per seed  # fmt: skip
        series[family] = ([float(np.mean(g)) for g in per_p], [float(np.std(g, ddof=1)) if len(g) > 1 else 0.0 for g in per_p])
    figure = plots.lines_with_errors(
        ps, series, title="Synthetic data: MTL gain vs task correlation\n(mean of the two tasks; error bars: std over seeds)",
        xlabel="p = cos(w1, w2)", ylabel="MTL gain (single-task MSE - model MSE)", path=ctx.figure("synthetic_gain"),
    )  # fmt: skip
    all_runs = [o for runs in results.values() for o in runs]
    return "\n\n".join([
        f"Data: `training.data.synthetic`, {data} (the rest as the MMoE paper's Sec. 3.2: c = 1, m = 10 sinusoids, "
        f"noise variance 0.01), regenerated for each seed {list(ctx.seeds)}; 10,000 rows train, the rest is halved "
        f"into validation and test. Training: {train}, Adam. Sizes: {SIZES if not ctx.quick else 'as below, quick'}. "
        f"MSE on the test split, mean ± std over seeds; MTL gain = single-task MSE - model MSE of the same seed "
        f"(PLE paper Eq. 11), so positive is better. {seconds(all_runs)}.",
        table(["p", "Pearson corr(y1, y2)"], [[f"{p:g}", pm(*correlations[p], 3)] for p in ps]),
        table(["p", "model", "y1 MSE", "y2 MSE", "gain y1", "gain y2"], rows),
        ctx.link(figure),
    ])  # fmt: skip

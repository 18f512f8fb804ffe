"""Experiment 3: KuaiRand real short-video logs, five tasks, MTL gain and the seesaw bubble chart."""

from __future__ import annotations

import numpy as np

from experiments import plots
from experiments.context import Context
from experiments.report import gain_cells, metric_cells, metric_names, seconds, table
from experiments.runner import Outcome, Run, mean_std, paired_gains

TITLE = "KuaiRand: real short-video logs and the seesaw"
FAMILIES = ["single-task", "shared-bottom", "mmoe", "cgc", "ple", "adatt"]
TASKS = ["click", "long_view", "completion", "share", "comment"]
RECIPE = {"epochs": 10, "batch_size": 256, "lr": 1e-3, "patience": 2}


def plan(ctx: Context) -> tuple[dict, dict, list[str]]:
    if ctx.quick:  # the committed sample: the quick path runs on any clone
        return {"nrows": 4000, "sample": True}, {"epochs": 1, "batch_size": 256}, ["single-task", "mmoe", "ple"]
    return {}, RECIPE, FAMILIES


def kuairand_runs(ctx: Context, family: str) -> list[Run]:
    data, train, _ = plan(ctx)
    return [Run.of("kuairand", family, seed, data_options=data, train=train) for seed in ctx.seeds]


def run(ctx: Context) -> str:
    data, train, families = plan(ctx)
    runner = ctx.runner("kuairand")
    results: dict[str, list[Outcome]] = {f: runner.run_all(kuairand_runs(ctx, f)) for f in families}
    singles = results["single-task"]
    names = metric_names(singles[0], TASKS)
    rows = [[f, *metric_cells(results[f], TASKS)] for f in families]
    gain_rows = [[f, *gain_cells(results[f], singles, TASKS)] for f in families if f != "single-task"]
    # The seesaw: what a model gains on long view against what it gives up on the other binary tasks.
    points = {}
    for f in families:
        if f == "single-task":
            continue
        vtr = mean_std(paired_gains(results[f], singles, "long_view"))[0]
        others = float(np.mean([mean_std(paired_gains(results[f], singles, t))[0] for t in ("click", "share", "comment")]))
        points[f] = (vtr, others, float(np.mean([o.parameters for o in results[f]])))
    figure = plots.bubbles(points, title="KuaiRand seesaw: gain on long view vs on click, share, comment\n(bubble area ~ parameters)",
                           xlabel="long view (VTR): AUC gain over single-task",
                           ylabel="click, share, comment: mean AUC gain over single-task", path=ctx.figure("kuairand_seesaw"))  # fmt: skip
    return "\n\n".join([
        f"Data: kuairand/kuairand_27k_liked_or_hated.tsv in {'datasets/samples/' if ctx.quick else 'the data folder'} (docs/data.md; "
        f"{'first 4,000 rows of the committed 5,000-row sample' if ctx.quick else 'all 41,828 impressions; 664 users, 9,359 videos'}; "
        f"the rows with an explicit like or hate, so biased towards engaged users), split 80/10/10 "
        f"with the seed 0, not stratified (the data set's default; 32 share and 112 comment positives in the test split); completion = play time / duration in [0, 1], masked where duration is 0. "
        f"Recipe: {train}, default sizes, seeds {list(ctx.seeds)}. {seconds([o for rs in results.values() for o in rs])}.",
        "Test metrics, mean ± std over seeds (AUC: higher is better; MSE: lower is better):",
        table(["model", *names], rows),
        "MTL gain over single-task (Eq. 11, paired by seed; positive = better than single-task):",
        table(["model", *[t for t in TASKS]], gain_rows),
        ctx.link(figure),
    ])  # fmt: skip

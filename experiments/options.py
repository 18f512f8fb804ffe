"""Experiment 10: each training option alone, on census and KuaiRand, against the same PLE recipe.

One base recipe (PLE at its default sizes, standardised numbers, static loss weights, selection on
the weighted validation loss, no weight decay, no dropout) and one change at a time: numeric
encodings, weight decay, dropout, model selection, task balancing and a weight average. Seeds 0-4,
every change paired by seed with the base and tested (stats.py), per task.
"""

from __future__ import annotations

from experiments.context import Context
from experiments.report import metric_names, pm, seconds, signed, table
from experiments.runner import Outcome, Run, mean_std
from experiments.stats import paired

TITLE = "Training options, one at a time: what each does to PLE on census and KuaiRand"
DATA = {
    "census": (("income", "never_married"), {}),
    "kuairand": (("click", "long_view", "completion", "share", "comment"), {}),
}
BASE = {"epochs": 15, "batch_size": 512, "lr": 1e-3, "patience": 2}
OPTIONS = {  # name -> (train overrides, model overrides)
    "piecewise-linear numbers": ({"numeric_encoding": "piecewise"}, {}),
    "quantile-bin numbers": ({"numeric_encoding": "bins"}, {}),
    "weight decay 0.01 (AdamW)": ({"weight_decay": 0.01}, {}),
    "dropout 0.1 (experts and towers)": ({}, {"dropout": 0.1, "tower_dropout": 0.1}),
    "selection on normalised loss": ({"selection": "normalized_loss"}, {}),
    "uncertainty weighting": ({"task_balancing": "uncertainty"}, {}),
    "PCGrad": ({"task_balancing": "pcgrad"}, {}),
    "weight EMA 0.999": ({"ema_decay": 0.999}, {}),
}


def runs(ctx: Context, data: str, train: dict, model: dict) -> list[Run]:
    options = {"nrows": 3000, "sample": True} if ctx.quick else DATA[data][1]
    recipe = {"epochs": 1, "batch_size": 256} if ctx.quick else BASE
    return [Run.of(data, "ple", seed, data_options=options, train={**recipe, **train}, model=model, variant="options")
            for seed in ctx.seeds]  # fmt: skip


def effect(change: list[Outcome], base: list[Outcome], task: str) -> str:
    """The change minus the base, paired by seed, signed so that positive is better (MSE: base - change)."""
    sign = -1.0 if "mse" in base[0].test[task] else 1.0
    diff = [sign * (c.metric(task) - b.metric(task)) for c, b in zip(change, base)]
    result = paired(diff, [0.0] * len(diff))
    mark = {"better": " ▲", "worse": " ▼"}.get(result.verdict(), "")
    return f"{signed(*mean_std(diff))}{mark}"


def run(ctx: Context) -> str:
    runner = ctx.runner("options")
    planned = {(d, "base"): runs(ctx, d, {}, {}) for d in DATA}
    planned |= {(d, name): runs(ctx, d, train, model) for d in DATA for name, (train, model) in OPTIONS.items()}
    runner.prefetch(r for rs in planned.values() for r in rs)
    results = {cell: runner.run_all(rs) for cell, rs in planned.items()}
    parts = [
        f"Base recipe: PLE at its default sizes, {BASE}, standardised numbers, static loss weights, selection on the "
        f"weighted validation loss; seeds {list(ctx.seeds)}; each row changes one thing. Cells: the change's effect on "
        "the test metric (AUC; MSE for completion, sign flipped), paired by seed, mean ± std; ▲ / ▼: different from 0 "
        f"at 5 % (paired t-test), better / worse. {seconds([o for rs in results.values() for o in rs])}."
    ]
    for data, (tasks, _) in DATA.items():
        base = results[(data, "base")]
        names = metric_names(base[0], tasks)
        rows = [["base (absolute)", *[pm(*mean_std(o.metric(t) for o in base), digits=4) for t in tasks]]]
        rows += [[name, *[effect(results[(data, name)], base, t) for t in tasks]] for name in OPTIONS]
        parts += [f"**{data}**", table(["option", *names], rows)]
    return "\n\n".join(parts)

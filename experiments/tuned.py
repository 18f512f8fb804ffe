"""Experiments 7-8: census and KuaiRand with every model tuned on the same budget, beside the baselines.

For each data set, each family and each baseline gets the same number of Optuna trials on the
validation split (ranker-tune's objective: the validation loss, each task's divided by that of its
base rate, so every task weighs the same; baselines: one study per task, that task's validation
loss). The best configuration of each is kept as `examples/tuned/<data>-<model>.toml` (rerunning
reads it instead of tuning again; delete it to tune again), then trained with seeds 0-4 and scored
on the test split. Every PLE-versus-X claim is a paired comparison over those seeds
(experiments/stats.py).

To spread a study over several processes, point `RANKER_TUNING_STORAGE` at a PostgreSQL database
and start `ranker-tune` with the same `--study`, `--config` (the base recipe below, as written to
`examples/tuned/<data>-base.toml`) and `--trials` beside this command.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from experiments.context import Context
from experiments.report import metric_cells, metric_names, pm, seconds, table
from experiments.runner import REPORTS, Outcome, Run, _tables, load_dataset, mean_std
from experiments.stats import paired
from training import config as run_config

EXAMPLES = REPORTS.parent / "examples" / "tuned"
BASELINES = ("lightgbm", "logistic")


@dataclass(frozen=True)
class Setup:
    data: str
    tasks: tuple[str, ...]
    families: tuple[str, ...]
    base: dict  # the recipe every trial starts from (what it sets is not searched)
    trials: int
    regressions: tuple[str, ...] = ()  # tasks scored by MSE (lower is better)


SETUPS = {
    "census": Setup(
        "census", ("income", "never_married"), ("single-task", "mmoe", "ple"),
        {"train": {"epochs": 15, "patience": 2, "selection": "normalized_loss", "numeric_encoding": "piecewise",
                   "loss_gamma": {"income": 1.0, "never_married": 1.0}}},
        trials=12),
    "kuairand": Setup(
        "kuairand", ("click", "long_view", "completion", "share", "comment"), ("single-task", "mmoe", "cgc", "ple"),
        {"train": {"epochs": 15, "patience": 2, "selection": "normalized_loss", "numeric_encoding": "piecewise",
                   "loss_gamma": {t: 1.0 for t in ("click", "long_view", "completion", "share", "comment")}}},
        trials=12, regressions=("completion",)),
}  # fmt: skip
QUICK_BASE = {"train": {"epochs": 2, "selection": "normalized_loss"}, "model": {"embedding_dim": 4}}


def storage(ctx: Context) -> str:
    url = os.environ.get("RANKER_TUNING_STORAGE")
    if url:
        return url
    (ctx.out / "data").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{ctx.out / 'data' / 'tuning.db'}"  # git-ignored; the best configurations are committed


def base_tables(setup: Setup, ctx: Context, model: str) -> dict:
    data = {"data": {setup.data: {"nrows": 3000, "sample": True}}} if ctx.quick else {}
    base = QUICK_BASE if ctx.quick else setup.base
    # a baseline's tables name a network only to pass the same checks (its data options, split seed)
    flags = {"run": {"data": setup.data, "model": "ple" if model in BASELINES else model}}
    return run_config.merge(run_config.merge(run_config.DEFAULTS, run_config.merge(base, data)), flags)


def tuned(setup: Setup, ctx: Context, model: str) -> dict:
    """The best tables for `model` on `setup`: from examples/tuned/ if kept there, else tuned now."""
    from training.tune import network_objective, run_study

    path = (ctx.out / "tuned" if ctx.quick else EXAMPLES) / f"{setup.data}-{model}.toml"
    if path.exists():
        return tomllib.loads(path.read_text())
    cfg = run_config.RunConfig.from_tables(base_tables(setup, ctx, model))
    trials = 2 if ctx.quick else setup.trials
    study = f"{'quick-' if ctx.quick else ''}{setup.data}-{model}"
    dataset = load_dataset(setup.data, _options(cfg))
    if model in BASELINES:
        from training.baselines import tune_baseline

        tables = tune_baseline(model, dataset, cfg, study, storage(ctx), trials, 0, False)
    else:
        best = run_study(study, storage(ctx), network_objective(cfg, dataset), trials, 0, False).best_trial
        tables = best.user_attrs["tables"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# python -m experiments {setup.data}-tuned: the best of {trials} trials "
                    f"(study {study!r})\n" + run_config.to_toml(tables))  # fmt: skip
    return tables


def _options(cfg) -> tuple:
    from dataclasses import asdict

    return tuple(sorted((k, v) for k, v in asdict(cfg.data).items() if v is not None))


def runs(setup: Setup, ctx: Context, model: str, tables: dict) -> list[Run]:
    data = dict(tables.get("data", {}).get(setup.data, {}))
    if model in BASELINES:
        params = {task: dict(p) for task, p in tables["baseline"]["params"].items()}
        return [Run.of(setup.data, model, seed, data_options=data, model=params) for seed in ctx.seeds]
    train = {k: v for k, v in tables["train"].items() if k != "progress"}
    return [Run.of(setup.data, model, seed, data_options=data, model=tables.get("model", {}), train=train,
                   variant="tuned") for seed in ctx.seeds]  # fmt: skip


def run_setup(setup: Setup, ctx: Context) -> str:
    runner = ctx.runner(f"{setup.data}_tuned")
    models = [*setup.families, *BASELINES] if not ctx.quick else ["single-task", "ple", "lightgbm"]
    results: dict[str, list[Outcome]] = {m: runner.run_all(runs(setup, ctx, m, tuned(setup, ctx, m))) for m in models}
    tasks = list(setup.tasks)
    names = metric_names(results[models[0]][0], tasks)
    rows = [[m, *metric_cells(results[m], tasks)] for m in models]
    claims = []
    for other in [m for m in models if m != "ple"]:
        for task in tasks:
            a = [o.metric(task) for o in results["ple"]]
            b = [o.metric(task) for o in results[other]]
            sign = -1.0 if task in setup.regressions else 1.0  # positive = PLE better
            p = paired([sign * x for x in a], [sign * x for x in b])
            claims.append([f"PLE vs {other}", task, p.text(4), p.verdict()])
    epochs = [[m, pm(*mean_std(o.epochs for o in results[m]), 1)] for m in models if m not in BASELINES]
    importance = gbdt_importance(setup, results["lightgbm"][0].run, tasks)
    return "\n\n".join([
        f"Data: {setup.data} (the project's split; docs/data.md). Each model: {2 if ctx.quick else setup.trials} Optuna "
        f"trials on validation (baselines: that many per task), best configuration in `examples/tuned/{setup.data}-<model>.toml`, "
        f"then seeds {list(ctx.seeds)} on test. Base recipe of every network: {setup.base if not ctx.quick else QUICK_BASE}. "
        f"{seconds([o for rs in results.values() for o in rs])} (the seeded reruns; tuning not counted).",
        "Test metrics, mean ± std over seeds (AUC higher is better, MSE lower):",
        table(["model", *names], rows),
        "PLE against each other model, paired by seed (positive: PLE better; MSE compared as -MSE):",
        table(["comparison", "task", "PLE - other", "verdict at 5 %"], claims),
        "Epochs run by the networks (early stopping):",
        table(["model", "epochs"], epochs),
        "What the GBDT uses: LightGBM's split gain per feature (share of the task's total, seed 0's model), top 6:",
        table(["task", *[f"#{i + 1}" for i in range(6)]], importance),
    ])  # fmt: skip


def gbdt_importance(setup: Setup, run: Run, tasks: list[str]) -> list[list[str]]:
    from training.baselines import Splits

    splits = Splits(load_dataset(setup.data, run.data_options))
    params = _tables(run.model)  # task -> LightGBM settings
    rows = []
    for k, task in enumerate(tasks):
        shares = list(splits.importance(k, params[task], run.seed).items())[:6]
        rows.append([task, *[f"{name} {share:.0%}" for name, share in shares]])
    return rows


class _Experiment:
    def __init__(self, name: str):
        self.setup = SETUPS[name]
        self.TITLE = f"{name.capitalize() if name == 'census' else 'KuaiRand'}, tuned with equal budgets, beside LightGBM and a linear model"

    def run(self, ctx: Context) -> str:
        return run_setup(self.setup, ctx)


census_tuned = _Experiment("census")
kuairand_tuned = _Experiment("kuairand")

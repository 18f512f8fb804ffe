"""Experiment 6: PLE's depth and width on census: 1, 2 and 3 extraction levels (2 experts per
group), and 1, 2 and 4 experts per group (2 levels)."""

from __future__ import annotations

from experiments import census, plots
from experiments.context import Context
from experiments.report import metric_cells, seconds, table
from experiments.runner import Outcome, mean_std

TITLE = "PLE: number of extraction levels and experts per group"


def shapes(ctx: Context) -> list[tuple[int, int]]:
    """(levels, experts per group): task-specific and shared groups get the same number."""
    if ctx.quick:
        return [(1, 2), (2, 1)]
    return [(1, 2), (2, 2), (3, 2), (2, 1), (2, 4)]


def run(ctx: Context) -> str:
    data, train, _ = census.plan(ctx)
    runner = ctx.runner("levels")
    results: dict[tuple[int, int], list[Outcome]] = {
        (levels, experts): runner.run_all(census.census_runs(
            ctx, "ple", data, train, {"n_levels": levels, "n_task_experts": experts, "n_shared_experts": experts}))
        for levels, experts in shapes(ctx)
    }  # fmt: skip
    rows = [[levels, experts, *metric_cells(rs, census.TASKS), f"{rs[0].parameters:,}",
             f"{mean_std(o.seconds for o in rs)[0]:.0f}"] for (levels, experts), rs in results.items()]  # fmt: skip
    labels = [f"L{levels} E{experts}" for levels, experts in results]
    series = {t.replace("_", "-"): ([mean_std(o.metric(t) for o in rs)[0] for rs in results.values()],
                                    [mean_std(o.metric(t) for o in rs)[1] for rs in results.values()]) for t in census.TASKS}  # fmt: skip
    figure = plots.category_panels(labels, series, title="Census: PLE test AUC by shape (± std over seeds)",
                                   ylabel="test AUC", path=ctx.figure("levels"))
    return "\n\n".join([
        f"PLE on census with experiment 2's data, split and recipe ({train}); L = extraction levels, E = experts per "
        f"group (each task's own and the shared group alike); seeds {list(ctx.seeds)}. "
        f"{seconds([o for rs in results.values() for o in rs])}.",
        table(["levels", "experts per group", "income AUC", "never-married AUC", "parameters", "seconds per run"], rows),
        ctx.link(figure),
    ])  # fmt: skip

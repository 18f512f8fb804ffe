"""Experiment 5: the PLE paper's loss design (Sec. 5.3), ablated on the simulator where VTR, VCR,
SHR and CMR exist only after a click: each task's loss over its own sample space vs the naive loss
over every impression, and per-epoch task weights w_k0 * gamma_k^t vs static weights."""

from __future__ import annotations

from experiments import plots
from experiments.context import Context, simulator_plan
from experiments.report import metric_cells, metric_names, seconds, table
from experiments.runner import Outcome, Run, mean_std

TITLE = "Loss design: sample-space loss and dynamic task weights"
TASKS = ["ctr", "vtr", "vcr", "shr", "cmr"]
# Dynamic weights: CTR (the densest task, which converges first) fades by 0.8 per epoch, so later
# epochs spend more of the update on the after-click tasks; the others stay at 1.
GAMMA = {"ctr": 0.8}
VARIANTS = {
    "sample space, static": {},
    "sample space, dynamic": {"loss_gamma": GAMMA},
    "naive, static": {"sample_space_loss": False},
    "naive, dynamic": {"sample_space_loss": False, "loss_gamma": GAMMA},
}


def run(ctx: Context) -> str:
    data, train = simulator_plan(ctx.quick)
    runner = ctx.runner("loss")
    results: dict[str, list[Outcome]] = {
        name: runner.run_all(Run.of("videolog", "ple", seed, data_options=data, train={**train, **extra},
                                    variant="" if not extra else name) for seed in ctx.seeds)  # fmt: skip
        for name, extra in VARIANTS.items()
    }
    base = results["sample space, static"]
    rows = [[name, *metric_cells(rs, TASKS)] for name, rs in results.items()]
    # Each metric relative to the sample-space static baseline, in the direction of "better".
    def better(o: Outcome, b: Outcome, t: str) -> float:
        return o.metric(t) - b.metric(t) if "auc" in o.test[t] else b.metric(t) - o.metric(t)

    series = {
        name: ([mean_std(better(o, b, t) for o, b in zip(rs, base))[0] for t in TASKS],
               [mean_std(better(o, b, t) for o, b in zip(rs, base))[1] for t in TASKS])
        for name, rs in results.items() if name != "sample space, static"
    }  # fmt: skip
    figure = plots.bar_chart(TASKS, series, title="Loss ablation (PLE on the simulator): change vs sample-space static",
                             ylabel="AUC gain / MSE reduction", path=ctx.figure("loss_ablation"))  # fmt: skip
    return "\n\n".join([
        f"PLE (default sizes) on the simulator (`training.data.videolog`, {data or 'defaults'}), recipe {train}, seeds "
        f"{list(ctx.seeds)}. Naive: every task's loss over all impressions, labels outside the click space counting "
        f"as 0; sample space: each task's loss averaged over its own samples only (the PLE paper's Sec. 5.3). Dynamic: "
        f"w_k(t) = w_k0 * gamma_k^t with w_k0 = 1 and gamma = {GAMMA} (others 1); static: w_k = 1. Every metric is "
        f"measured inside each task's own sample space (after a click for VTR, VCR, SHR, CMR). "
        f"{seconds([o for rs in results.values() for o in rs])}.",
        table(["variant", *metric_names(base[0], TASKS)], rows),
        ctx.link(figure),
    ])  # fmt: skip

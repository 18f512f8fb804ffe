"""Experiment 4: expert utilization (PLE paper Fig. 8): each gate's mean and std weight per expert
for MMoE, CGC and PLE, on the simulator and on KuaiRand (the first seed's runs)."""

from __future__ import annotations

from experiments import kuairand, plots
from experiments.context import Context, simulator_plan
from experiments.report import table
from experiments.runner import Outcome, Run
from training.models import config_with

TITLE = "Expert utilization of the gates"
FAMILIES = ["mmoe", "cgc", "ple"]


def expert_names(outcome: Outcome) -> list[str]:
    """Experts in the order of the gates' weights: each task's own, then the shared ones (CGC/PLE)."""
    config = config_with(outcome.run.family, dict(outcome.run.model))
    tasks = list(outcome.test)
    if hasattr(config, "n_task_experts"):
        own = [f"{t}.{i}" for t in tasks for i in range(config.n_task_experts)]
        return own + [f"shared.{i}" for i in range(config.n_shared_experts)]
    return [f"E{i}" for i in range(config.n_experts)]


def gate_weights(outcome: Outcome) -> dict[str, dict[str, tuple[float, float]]]:
    """'level j / gate' -> expert name -> (mean, std) of the gate's weight on that expert."""
    names = expert_names(outcome)
    out = {}
    for key, stats in outcome.gates.items():
        _, level, gate = key.split(".", 2)
        experts = sorted({int(k.split(".")[0].removeprefix("expert")) for k in stats})
        out[f"{level} / {gate}"] = {names[e]: (stats[f"expert{e}.mean"], stats[f"expert{e}.std"]) for e in experts}
    return out


def summary_row(data: str, family: str, gate: str, weights: dict[str, tuple[float, float]]) -> list[str]:
    owner = gate.split(" / ")[1]
    own = sum(m for name, (m, _) in weights.items() if name.startswith(f"{owner}."))
    shared = sum(m for name, (m, _) in weights.items() if name.startswith("shared."))
    top = max(weights, key=lambda n: weights[n][0])
    gated = family != "mmoe" and owner != "shared"
    return [data, family, gate, f"{own:.2f}" if gated else "", f"{shared:.2f}" if gated else "",
            f"{top} ({weights[top][0]:.2f} ± {weights[top][1]:.2f})"]  # fmt: skip


def run(ctx: Context) -> str:
    sim_data, sim_train = simulator_plan(ctx.quick)
    seed = ctx.seeds[0]
    runner = ctx.runner("utilization")
    outcomes = {("videolog", f): runner.run(Run.of("videolog", f, seed, data_options=sim_data, train=sim_train)) for f in FAMILIES}
    for f in FAMILIES:
        outcomes[("kuairand", f)] = runner.run(kuairand.kuairand_runs(ctx, f)[0])
    rows, figures = [], []
    for (data, family), outcome in outcomes.items():
        gates = gate_weights(outcome)
        rows += [summary_row(data, family, gate, w) for gate, w in gates.items()]
        figures.append(plots.grouped_bars(gates, title=f"{data}: {family} gate weights per expert (mean ± std over rows)",
                                          ylabel="weight", path=ctx.figure(f"utilization_{data}_{family}"), ncols=4))  # fmt: skip
    return "\n\n".join([
        f"The gates' softmax weights over the validation rows of one run per model (seed {seed}); the simulator "
        f"(`training.data.videolog`, {sim_data or 'defaults'}, recipe {sim_train}) and KuaiRand (experiment 3's recipe). "
        "Own / shared: the total mean weight a task's gate puts on its own experts and on the shared ones (CGC, PLE).",
        table(["data", "model", "level / gate", "own experts", "shared experts", "top expert (mean ± std)"], rows),
        *[ctx.link(f) for f in figures],
    ])  # fmt: skip

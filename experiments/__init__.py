"""The papers' experiments, run with this package: `python -m experiments NAME`.

Each experiment module has TITLE and run(Context) -> markdown; results of every training run are
kept in reports/data/*.jsonl (a rerun reads them instead of training again), figures go to
reports/figures/, and reports/experiments.md is assembled from the sections plus the hand-written
discussion in reports/discussion.md.
"""

from __future__ import annotations

from experiments import census, kuairand, levels, loss, options, simulator, synthetic, utilization
from experiments.tuned import census_tuned, kuairand_tuned

# Report order = the order; utilization reuses KuaiRand's runs, levels census's recipe.
EXPERIMENTS = {
    "synthetic": synthetic,
    "census": census,
    "kuairand": kuairand,
    "utilization": utilization,
    "loss": loss,
    "levels": levels,
    "census-tuned": census_tuned,
    "kuairand-tuned": kuairand_tuned,
    "simulator": simulator,
    "options": options,
}

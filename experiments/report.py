"""Markdown pieces for reports/experiments.md: tables, mean ± std cells, the machine line."""

from __future__ import annotations

import datetime as dt
import os
from typing import Sequence

from experiments.runner import Outcome, machine, mean_std, paired_gains


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pm(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def signed(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:+.{digits}f} ± {std:.{digits}f}"


def machine_line() -> str:
    m = machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{m['cpu']}, {m['cores']} cores, no GPU; torch {m['torch']} with {m['torch_threads']} thread(s) per "
            f"run, Python {m['python']}; load average at the end {load}; "
            f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")  # fmt: skip


def metric_cells(outcomes: Sequence[Outcome], tasks: Sequence[str], digits: int = 4) -> list[str]:
    """Each task's test metric (AUC or MSE) as mean ± std over the outcomes (one per seed)."""
    return [pm(*mean_std(o.metric(t) for o in outcomes), digits) for t in tasks]


def gain_cells(outcomes: Sequence[Outcome], singles: Sequence[Outcome], tasks: Sequence[str], digits: int = 4) -> list[str]:
    """Each task's MTL gain (Eq. 11, paired by seed) as mean ± std."""
    return [signed(*mean_std(paired_gains(list(outcomes), list(singles), t)), digits) for t in tasks]


def metric_names(outcome: Outcome, tasks: Sequence[str]) -> list[str]:
    return [f"{t} {'AUC' if 'auc' in outcome.test[t] else 'MSE'}" for t in tasks]


def seconds(outcomes: Sequence[Outcome]) -> str:
    hardware = sorted({o.hardware for o in outcomes if o.hardware})
    where = f" on {' and '.join(hardware)}" if hardware else ""
    return f"{sum(o.seconds for o in outcomes) / 60:.1f} min of training over {len(outcomes)} runs{where}"

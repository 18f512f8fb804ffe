"""What every experiment gets: where to write, how big to run, and the run cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.runner import Runner


@dataclass
class Context:
    out: Path  # reports/ (or a scratch folder in tests)
    quick: bool = False  # tiny sizes and 2 seeds: checks the whole path in seconds, proves nothing
    seeds: tuple[int, ...] = (0, 1, 2)
    jobs: int = 1  # runs trained at once (experiments that prefetch their runs)

    def runner(self, experiment: str) -> Runner:
        return Runner(experiment, directory=self.out, jobs=self.jobs)

    def figure(self, name: str) -> Path:
        return self.out / "figures" / f"{name}.png"

    def link(self, path: Path) -> str:
        """A figure as markdown, relative to reports/experiments.md."""
        return f"![{path.stem}]({path.relative_to(self.out).as_posix()})"


def simulator_plan(quick: bool) -> tuple[dict, dict]:
    """The videolog simulator's size and recipe, shared by experiments 4 and 5 (so their common
    runs train once): five tasks, SHR/CMR/VTR/VCR only after a click."""
    if quick:
        return {"n_users": 300, "n_videos": 400, "n_impressions": 4000}, {"epochs": 2, "batch_size": 256}
    return {"n_impressions": 100_000}, {"epochs": 6, "batch_size": 512, "lr": 1e-3, "patience": 2}

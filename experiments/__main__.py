"""python -m experiments NAME [NAME ...] | all | report  [--quick] [--out reports] [--seeds 0 1 2]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from experiments import EXPERIMENTS
from experiments.context import Context
from experiments.report import machine_line
from experiments.runner import REPORTS

HEADER = """# Experiments: the PLE and MMoE papers' findings, reproduced with this package

Every table and figure below was produced by `python -m experiments NAME` (one command per
experiment; `all` runs them in order), on a 2-core CPU unless a section's time line names an NVIDIA
H200: the synthetic sweep, the simulator and the options ran there once, `--jobs 11-15` runs at a
time (the GPU machine's 16 cores). A seeded run repeats its digits on the same machine only; on
another machine it gives another draw from the same spread. Each training run is one call of the package's own
`run_training` (the loop of `ranker-train`), its results kept as a JSON line in
[reports/data/](data/) and its figures in [reports/figures/](figures/); rerunning reads the kept
results instead of training again (delete a file to retrain). `python -m experiments report`
rebuilds this page from the sections. Seeds are listed per experiment. MTL gain is the PLE paper's
Eq. 11: the multi-task model's metric minus the single-task model's (for MSE, the other way round),
paired by seed, so positive always means "better than single-task".
"""


def assemble(out: Path) -> Path:
    sections = [(out / "sections" / f"{name}.md") for name in EXPERIMENTS]
    parts = [HEADER] + [s.read_text() for s in sections if s.exists()]
    discussion = out / "discussion.md"
    if discussion.exists():
        parts.append(discussion.read_text())
    path = out / "experiments.md"
    path.write_text("\n\n".join(p.strip() for p in parts) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    p.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(EXPERIMENTS)}, all, or report")
    p.add_argument("--out", type=Path, default=REPORTS)
    p.add_argument("--quick", action="store_true", help="tiny sizes on the committed data samples (datasets/samples/), 2 seeds: checks the path, "
                        "proves nothing")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: runs are reproducible and cheap)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process with --threads threads "
                        "(the same results as one at a time)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.jobs < 1:
        p.error("--threads and --jobs must be at least 1")
    try:  # before hours of runs: --out must be a folder this process can write
        (args.out / "sections").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out {args.out}: {exc.strerror or exc}")
    names = list(EXPERIMENTS) if args.names == ["all"] else [n for n in args.names if n != "report"]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s) {unknown}; known: {', '.join(EXPERIMENTS)}, all, report", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    ctx = Context(out=args.out, quick=args.quick, seeds=tuple(args.seeds or ((0, 1) if args.quick else (0, 1, 2))),
                  jobs=args.jobs)
    for name in names:
        module = EXPERIMENTS[name]
        start = time.perf_counter()
        try:
            body = module.run(ctx)
        except FileNotFoundError as exc:  # a full data file missing: the loader says where it looked and what to do
            print(f"python -m experiments {name}: {exc}", file=sys.stderr)
            return 2
        command = f"python -m experiments {name}" + (" --quick" if args.quick else "")
        section = (f"## {list(EXPERIMENTS).index(name) + 1}. {module.TITLE}\n\n`{command}` — "
                   f"{time.perf_counter() - start:.0f} s for this (re)build; {machine_line()}.\n\n{body}\n")  # fmt: skip
        (ctx.out / "sections").mkdir(parents=True, exist_ok=True)
        (ctx.out / "sections" / f"{name}.md").write_text(section)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(assemble(ctx.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

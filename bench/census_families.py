"""Census: several families with the same training recipe, and their MTL gain over single-task.

    nice -n 10 .venv/bin/python -m bench.census_families [--families single-task mmoe cgc ple]

Trains `single-task` first, then every other family with `--baseline-metrics` pointing at it, so
model.json carries the PLE paper's Eq. 11 gain per task. Recipe: 8 epochs, batch 512, Adam 1e-3,
early stopping patience 2, each family's default hyper-parameters; the census split of seed 2020.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["--data", "census", "--epochs", "8", "--batch-size", "512", "--lr", "1e-3", "--patience", "2"]


def train(family: str, models: str, extra: list[str]) -> dict:
    cmd = [str(Path(sys.executable).parent / "ranker-train"), *RECIPE, "--model", family, "--out", models, *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    folder = Path(run.stdout.strip().splitlines()[-1])
    return json.loads((folder / "metrics.json").read_text()) | {"folder": str(folder)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--families", nargs="+", default=["shared-bottom", "mmoe", "cgc", "ple"])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "census_families.json")
    args = p.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = {}
    with tempfile.TemporaryDirectory() as models:
        baseline = train("single-task", models, [])
        results["single-task"] = baseline
        for family in args.families:
            results[family] = train(family, models, ["--baseline-metrics", str(Path(baseline["folder"]) / "metrics.json")])
            print(family, {t: results[family][f"test.{t}"]["auc"] for t in ("income", "never_married")}, flush=True)
    table = {
        family: {
            "test_auc": {t: round(m[f"test.{t}"]["auc"], 4) for t in ("income", "never_married")},
            "mtl_gain_test": {t: round(v, 4) for t, v in m.get("mtl_gain.test", {}).items()},
            "training_seconds": round(m["training"]["seconds"], 1),
            "epochs_run": int(m["training"]["epochs"]),
        }
        for family, m in results.items()
    }
    out = {
        "what": "census, same recipe per family; MTL gain (PLE paper Eq. 11) against the single-task run",
        "recipe": " ".join(["ranker-train", *RECIPE, "--model", "<family>"]),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "gpu": None, "nice": 10, "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},  # fmt: skip
        "results": table,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every model family on every data set: a short training run, then the checked export.

    nice -n 10 .venv/bin/python -m bench.zoo_matrix [--out bench/results/zoo_matrix.json]

Small slices and one epoch: this shows that each (family, data set) pair trains, evaluates and
exports (ONNX Runtime parity within 1e-5 at batch 1 and 257 is checked by write_version), not how
good each family is. Figures per pair: validation metrics, seconds, parameters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

from training.data.sets import load_data
from training.export import write_version
from training.models import FAMILIES, config_with
from training.train import TrainConfig, run_training

REPO = Path(__file__).resolve().parents[1]
DATA = {
    "videolog": {"n_users": 500, "n_videos": 800, "n_impressions": 6000},
    "synthetic": {"n": 4000, "d": 20},
    "census": {"nrows": 6000},
    "kuairand": {"nrows": 6000},
}
SMALL = {"embedding_dim": 4, "expert_hidden": (32, 16), "bottom_hidden": (32, 16), "hidden": (32, 16), "width": 16,
         "shared_hidden": (32, 16), "task_hidden": (16,), "tower_hidden": (8,), "gate_outputs": True}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "zoo_matrix.json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as models:
        for data_name, options in DATA.items():
            dataset = load_data(data_name, options, None)
            for family in sorted(FAMILIES):
                fields = config_with(family, {}).__dataclass_fields__
                config = config_with(family, {k: v for k, v in SMALL.items() if k in fields})
                start = time.perf_counter()
                entry = {"data": data_name, "family": family}
                try:
                    result = run_training(dataset, family, TrainConfig(epochs=1, batch_size=256), config, log=lambda _: None)
                    folder = write_version(result, Path(models), f"{data_name}-{family}")
                    spec = json.loads((folder / "model.json").read_text())
                    entry.update(ok=True, parameters=sum(q.numel() for q in result.model.parameters()),
                                 parity_max_abs_error=spec["metrics"]["training"]["parity_max_abs_error"],
                                 validation={t: {k: round(v, 4) for k, v in m.items() if k in ("auc", "mse")}
                                             for t, m in result.metrics["validation"].items()})  # fmt: skip
                except Exception as exc:  # recorded, so one broken pair does not hide the others
                    entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                entry["seconds"] = round(time.perf_counter() - start, 2)
                rows.append(entry)
                print(json.dumps(entry), flush=True)
    summary = {
        "what": "one epoch of every family on a slice of every data set, then write_version (export + parity check)",
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_slices": DATA,
        "all_ok": all(r["ok"] for r in rows),
        "machine": {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()], "gpu": None},
        "runs": rows,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Logged impressions joined with their feedback into training rows: train the next version on exactly
the features the service encoded (no re-derivation, so no train/serve skew).

Reads what ranker-log-sink wrote (`<logs>/impressions/<model>/<version>/*.parquet`, one row per
shown candidate; `<logs>/feedback/*.parquet`) and the logged version's model.json (its features and
tasks), and writes one Parquet file in the layout training/data/stream.py reads:

    python -m training.data.logjoin --logs logs --models models --model ple --out rows.parquet
    ranker-train --data parquet --path rows.parquet --model ple --out models

A candidate the answer left out (past the request's top_k) was never shown and is no row. Per
shown candidate and task, the label is the value of the last feedback event for that request,
item and task within `--window-s` of the impression. A binary task without an event is a negative;
a regression task without one has no label. A task whose sample space is another task
(`sample_space` in model.json: share and comment exist only after a click) is in its space only
where that task's label is positive. Feedback that names an unknown request id, an item that
request did not show, a task the model lacks, or that came after the window is dropped and
counted (printed, and returned by `join`). The logged version's outputs ride along as
`output.<task>` (training reads only the feature, label and mask columns): its metrics on any
split of the rows need no second inference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract import impressions as imp
from contract.modelspec import ModelSpec
from training.data.stream import META_KEY

KEY = ["request_id", "item_id"]


def read_dir(folder: Path) -> pd.DataFrame | None:
    files = sorted(folder.rglob("*.parquet")) if folder.exists() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pandas()


def labels_for(spec: ModelSpec, values: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(labels, masks), (rows, tasks): `values` holds one column per task, NaN where no event came."""
    labels = np.zeros((len(values), len(spec.tasks)), dtype=np.float32)
    masks = np.zeros_like(labels, dtype=bool)
    index = {t.name: k for k, t in enumerate(spec.tasks)}
    for k, task in enumerate(spec.tasks):
        got = values[task.name].to_numpy(np.float64) if task.name in values else np.full(len(values), np.nan)
        if task.kind == "binary":
            labels[:, k], masks[:, k] = np.nan_to_num(got, nan=0.0), True
        else:
            labels[:, k], masks[:, k] = got, ~np.isnan(got)
        if task.sample_space != "all":
            parent = index[task.sample_space]
            masks[:, k] &= masks[:, parent] & (labels[:, parent] > 0)
    return labels, masks


def join(logs: Path, spec: ModelSpec, window_s: float = 3600.0) -> tuple[pa.Table, dict[str, int]]:
    shown = read_dir(Path(logs) / "impressions" / spec.name / str(spec.version))
    if shown is None:
        raise FileNotFoundError(f"no impressions of {spec.name}/{spec.version} under {logs}/impressions")
    if imp.RETURNED in shown:  # a candidate the answer left out (past top_k) was never shown: no label
        shown = shown[shown[imp.RETURNED].fillna(True).astype(bool)]
    shown = shown.rename(columns={imp.REQUEST_ID: "request_id", imp.ITEM_ID: "item_id", imp.TIME: "shown_at"})
    shown = shown.drop_duplicates(KEY, keep="first").reset_index(drop=True)
    events = read_dir(Path(logs) / "feedback")
    counts = {"impressions": len(shown), "events": 0, "joined": 0, "unknown_request": 0, "unknown_item": 0,
              "unknown_task": 0, "after_window": 0}  # fmt: skip
    values = pd.DataFrame(index=shown.index)
    if events is not None:
        counts["events"] = len(events)
        known_requests = set(shown["request_id"])
        tasks = {t.name for t in spec.tasks}
        counts["unknown_request"] = int((~events["request_id"].isin(known_requests)).sum())
        events = events[events["request_id"].isin(known_requests)]
        counts["unknown_task"] = int((~events["task"].isin(tasks)).sum())
        events = events[events["task"].isin(tasks)]
        matched = events.merge(shown[[*KEY, "shown_at"]].reset_index(), on=KEY, how="left")
        counts["unknown_item"] = int(matched["index"].isna().sum())
        matched = matched.dropna(subset=["index"])
        late = matched["time"] - matched["shown_at"] > window_s
        counts["after_window"] = int(late.sum())
        matched = matched[~late].sort_values("time").drop_duplicates(["index", "task"], keep="last")
        counts["joined"] = len(matched)
        values = matched.pivot(index="index", columns="task", values="value").reindex(shown.index)
    labels, masks = labels_for(spec, values)
    arrays = {}
    for feature in spec.features:
        column = shown[feature.name] if feature.name in shown else pd.Series([None] * len(shown))
        arrays[feature.name] = (pa.array(column.to_numpy(np.float64, na_value=np.nan)) if feature.kind == "dense"
                                else pa.array(imp.storable(column.tolist())))  # fmt: skip
    for k, task in enumerate(spec.tasks):
        arrays[f"label.{task.name}"] = pa.array(labels[:, k])
        arrays[f"mask.{task.name}"] = pa.array(masks[:, k])
        if imp.OUTPUT + task.name in shown:  # what the logged version predicted: its metrics on these rows
            arrays[imp.OUTPUT + task.name] = pa.array(shown[imp.OUTPUT + task.name].to_numpy(np.float64))
    meta = {"name": f"logged:{spec.name}/{spec.version}",
            "description": f"impressions served by {spec.name}/{spec.version} joined with feedback within {window_s:g} s",
            "seed": None, "features": [f.model_dump() for f in spec.features], "tasks": [t.model_dump() for t in spec.tasks],
            "default_weights": dict(spec.scoring.weights), "split_fractions": [0.8, 0.1],
            "video_len_column": "video_len" if any(f.name == "video_len" for f in spec.features) else None}  # fmt: skip
    return pa.table(arrays).replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", type=Path, default=Path("logs"), help="ranker-log-sink's --out")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--model", default="ple")
    p.add_argument("--version", type=int, help="the logged version (default: the newest one logged)")
    p.add_argument("--window-s", type=float, default=3600.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logged = sorted(int(d.name) for d in (args.logs / "impressions" / args.model).iterdir() if d.name.isdigit())
    version = args.version or logged[-1]
    spec = ModelSpec.model_validate_json((args.models / args.model / str(version) / "model.json").read_bytes())
    table, counts = join(args.logs, spec, args.window_s)
    pq.write_table(table, args.out)
    print(json.dumps({"out": str(args.out), "rows": table.num_rows, **counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

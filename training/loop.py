"""The production loop, end to end, on the simulator: serve, log, get feedback, retrain, shadow, switch.

    python -m training.loop [--workdir DIR] [--redis-url redis://127.0.0.1:6379/0] [--requests 1500]

1. Version 1: a PLE trained on a simulated history (training.data.videolog), in DIR/models.
2. `ranker-serve` serves it with Redis as the control plane, every request's impressions logged
   (RANKER_LOG_SAMPLE=1), the feature tables in process, new versions loaded but not routed
   (RANKER_WATCH=explicit), and ranker-log-sink drains the log and the feedback into DIR/logs.
3. Simulated users of the same world ask for rankings (`--candidates` videos, top `--shown`),
   react to what they are shown by the simulator's ground truth (World.react), and send their
   clicks, long views, completion, shares and comments to POST /v1/feedback.
4. The join (training.data.logjoin) turns the logged impressions and the feedback into training
   rows; version 2 trains on them (exactly the features version 1 was served with).
5. The watcher loads version 2; an admin call puts it in the shadow of version 1 at sample 1.0;
   more users come; the shadow's agreement figures are read from the dashboard's data.
6. An admin call activates version 2; a ranking comes back from it.

It prints each stage, and at the end the held-out logged rows' metrics (the join's test split) of
version 2 beside those version 1 had when it served them, and writes DIR/loop.json. Its Redis keys
live under a prefix of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import redis

from contract import impressions as imp
from contract.modelspec import ModelSpec
from training.config import TrainConfig
from training.data import videolog
from training.data.logjoin import join
from training.data.logsink import GROUP, Sink
from training.data.stream import split_of
from training.evaluate import task_metrics
from training.export import write_version
from training.models.ple import PLEConfig
from training.train import run_parquet_training, run_training

TOKEN = "loop-admin"
QUICK_PLE = PLEConfig(n_levels=1, n_task_experts=1, n_shared_experts=1, expert_hidden=(32,), tower_hidden=(8,))


def stage(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Client:
    """JSON over one keep-alive HTTP connection (the standard library only)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None, admin: bool = False) -> tuple[int, dict]:
        headers = {"content-type": "application/json"}
        if admin:
            headers["authorization"] = f"Bearer {TOKEN}"
        self.connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, features: Path, redis_url: str, prefix: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RANKER_REDIS_URL": redis_url, "RANKER_REDIS_PREFIX": prefix, "RANKER_LOG_SAMPLE": "1",
           "RANKER_FEATURE_STORE": "embedded", "RANKER_FEATURES_DIR": str(features), "RANKER_WATCH": "explicit",
           "RANKER_WATCH_INTERVAL_S": "0.5", "RANKER_ADMIN_TOKEN": TOKEN}  # fmt: skip
    command = [sys.executable, "-m", "service.cli", "--models", str(models), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ranker-serve exited: {log.read_text()[-2000:]}")
        try:
            if Client(port).call("GET", "/health/ready")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("ranker-serve did not become ready")


def users_visit(client: Client, world: videolog.World, n: int, candidates: int, shown: int,
                rng: np.random.Generator, feedback: bool = True) -> dict:  # fmt: skip
    """`n` users each ask for a ranking and react to its top `shown` by the world's ground truth."""
    activity = world.watch_minutes / world.watch_minutes.sum()
    popularity = np.exp(world.quality) / np.exp(world.quality).sum()
    video_ids = world.videos.index.values
    totals = {"requests": 0, "shown": 0, "clicks": 0, "events": 0, "versions": {}}
    events: list[dict] = []
    for _ in range(n):
        u = int(rng.choice(len(activity), p=activity))
        offered = rng.choice(len(video_ids), candidates, replace=False, p=popularity)
        network, hour = int(rng.choice(3, p=[0.6, 0.3, 0.1])), int(round(rng.normal(20, 4))) % 24
        request = {"user": {"id": world.users.index[u]}, "context": {"network": videolog.NETWORKS[network], "hour": hour},
                   "candidates": [{"id": video_ids[v]} for v in offered], "top_k": shown}  # fmt: skip
        status, answer = client.call("POST", "/v1/rank", request)
        if status != 200:
            raise RuntimeError(f"/v1/rank answered {status}: {answer}")
        totals["requests"] += 1
        totals["versions"][answer["version"]] = totals["versions"].get(answer["version"], 0) + 1
        items = [int(item["id"][1:]) for item in answer["items"]]  # "v42" -> 42
        n_items = len(items)
        did = world.react(np.full(n_items, u), np.array(items), np.full(n_items, network), np.full(n_items, hour), rng)
        totals["shown"] += n_items
        totals["clicks"] += int(did["click"].sum())
        if not feedback:
            continue
        for k, v in enumerate(items):
            base = {"request_id": answer["request_id"], "item_id": video_ids[v]}
            events.append({**base, "task": "ctr", "value": float(did["click"][k])})
            if did["click"][k]:
                events += [{**base, "task": "vtr", "value": float(did["long_view"][k])},
                           {**base, "task": "vcr", "value": float(did["completion"][k])},
                           {**base, "task": "shr", "value": float(did["share"][k])},
                           {**base, "task": "cmr", "value": float(did["comment"][k])}]  # fmt: skip
        if len(events) >= 500:
            totals["events"] += send(client, events)
    totals["events"] += send(client, events)
    return totals


def send(client: Client, events: list[dict]) -> int:
    sent = 0
    while events:
        chunk, events[:] = events[:1000], events[1000:]
        status, answer = client.call("POST", "/v1/feedback", {"events": chunk})
        if status != 200:
            raise RuntimeError(f"/v1/feedback answered {status}: {answer}")
        sent += answer["accepted"]
    return sent


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ple-loop-"))
    models, features, logs = work / "models", work / "features", work / "logs"
    rng = np.random.default_rng(args.seed)
    model_config = QUICK_PLE if args.quick else None
    train = TrainConfig(epochs=args.epochs, seed=args.seed, batch_size=512)
    quiet = (lambda _line: None) if args.quiet_training else (lambda line: print("   ", line, flush=True))
    summary: dict = {"workdir": str(work)}

    stage(f"1. version 1: PLE trained on a simulated history of {args.history:,} impressions")
    config = videolog.VideoLogConfig(n_users=args.users, n_videos=args.videos, n_impressions=args.history, seed=args.seed)
    history = videolog.simulate(config)
    world = history.world
    videolog.write_feature_tables(history, features)
    first = run_training(videolog.to_dataset(history), "ple", train, model_config, log=quiet)
    print("   ", write_version(first, models, "ple"))

    prefix = f"loop-{uuid.uuid4().hex[:8]}:"
    client_redis = redis.Redis.from_url(args.redis_url)
    port = free_port()
    stage(f"2. ranker-serve on 127.0.0.1:{port} (Redis {args.redis_url}, prefix {prefix}); ranker-log-sink -> {logs}")
    server = start_server(models, features, args.redis_url, prefix, port, work / "server.log")
    sink = Sink(client_redis, logs, prefix, block_ms=200)
    stop = threading.Event()
    sink_thread = threading.Thread(target=sink.run, args=(stop,), name="log-sink", daemon=True)
    sink_thread.start()
    try:
        client = Client(port)
        stage(f"3. {args.requests:,} simulated users ask for {args.shown} of {args.candidates} videos and react")
        visits = users_visit(client, world, args.requests, args.candidates, args.shown, rng)
        print(f"    {visits['shown']:,} shown, {visits['clicks']:,} clicked (CTR {visits['clicks'] / visits['shown']:.3f}), "
              f"{visits['events']:,} feedback events sent")  # fmt: skip
        summary["served_by_version_1"] = visits

        stage("4. the sink writes Parquet; the join makes training rows; version 2 trains on them")
        for kind in ("impressions", "feedback"):
            key = prefix + (imp.IMPRESSIONS_STREAM if kind == "impressions" else imp.FEEDBACK_STREAM)
            wait_for(lambda key=key: client_redis.xlen(key) >= (visits["requests"] if kind == "impressions" else 1)
                     and client_redis.xpending(key, GROUP)["pending"] == 0
                     and client_redis.xinfo_groups(key)[0]["last-delivered-id"] == client_redis.xinfo_stream(key)["last-generated-id"],
                     60, f"the sink to drain {kind}")  # fmt: skip
        spec = ModelSpec.model_validate_json((models / "ple" / "1" / "model.json").read_bytes())
        table, counts = join(logs, spec, window_s=3600)
        rows_path = work / "logged_rows.parquet"
        pq.write_table(table, rows_path)
        print(f"    {table.num_rows:,} rows ({counts})")
        second = run_parquet_training(rows_path, "ple", train, model_config, log=quiet, chunk_rows=8192)
        print("   ", write_version(second, models, "ple"))
        summary["join"] = counts

        stage("5. the watcher loads version 2 (no traffic); it shadows version 1 on live requests")
        wait_for(lambda: any(m["version"] == 2 and m["state"] == "ready"
                             for m in client.call("GET", "/v1/models")[1]["models"]), 60, "version 2 to load")  # fmt: skip
        status, answer = client.call("PUT", "/v1/admin/models/ple/shadow", {"version": 2, "sample": 1.0}, admin=True)
        if status != 200:
            raise RuntimeError(f"shadow: {status} {answer}")
        shadowed = users_visit(client, world, args.shadow_requests, args.candidates, args.shown, rng, feedback=False)
        shadow = wait_for(lambda: next((s for s in client.call("GET", "/dashboard/data")[1]["shadows"]
                                        if (s["serving"], s["shadow"]) == (1, 2) and s["compared_per_s"] > 0), None),
                          30, "the shadow's comparisons")  # fmt: skip
        print(f"    {shadowed['requests']} requests; top-10 overlap {shadow['top10_overlap']:.3f}, rank correlation "
              f"{shadow['rank_correlation']:.3f}, mean |Δ ctr| {shadow['abs_difference'].get('ctr', float('nan')):.4f}, "
              f"shadow inference p50 {shadow['inference_ms']['p50']} ms, skipped {shadow['skipped_per_s']:.2f}/s")  # fmt: skip
        summary["shadow"] = shadow

        stage("6. an admin activates version 2")
        client.call("DELETE", "/v1/admin/models/ple/shadow", admin=True)
        status, answer = client.call("POST", "/v1/admin/models/ple/activate", {"version": 2}, admin=True)
        if status != 200:
            raise RuntimeError(f"activate: {status} {answer}")
        after = users_visit(client, world, args.shadow_requests, args.candidates, args.shown, rng, feedback=False)
        print(f"    rankings now come from versions {after['versions']}; CTR of what they show "
              f"{after['clicks'] / after['shown']:.3f} (version 1 showed {visits['clicks'] / visits['shown']:.3f})")  # fmt: skip
        summary["served_by_version_2"] = after
    finally:
        stop.set()
        sink_thread.join(10)
        server.terminate()
        server.wait(30)
        keys = list(client_redis.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client_redis.delete(*keys)

    stage("7. held-out logged rows (the join's test split): version 2 against what version 1 served")
    data = table.to_pydict()
    test = split_of(np.arange(table.num_rows), 0, (0.8, 0.1)) == 2
    labels = np.stack([np.asarray(data[f"label.{t.name}"], np.float32) for t in spec.tasks], axis=1)[test]
    masks = np.stack([np.asarray(data[f"mask.{t.name}"], bool) for t in spec.tasks], axis=1)[test]
    served = np.stack([np.asarray(data[imp.OUTPUT + t.name], np.float64) for t in spec.tasks], axis=1)[test]
    summary["held_out"] = {"rows": int(test.sum()), "version_1_served": task_metrics(served, labels, masks, spec.tasks),
                           "version_2": second.metrics["test"]}  # fmt: skip
    for task in spec.tasks:
        v1, v2 = summary["held_out"]["version_1_served"][task.name], second.metrics["test"][task.name]
        key = "auc" if task.kind == "binary" else "mse"
        print(f"    {task.name}: {key} version 1 {v1.get(key, float('nan')):.4f}, version 2 {v2.get(key, float('nan')):.4f} "
              f"({int(v2['samples'])} rows)")  # fmt: skip
    (work / "loop.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwrote {work / 'loop.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, help="where models, logs and results go (default: a new temp folder)")
    p.add_argument("--redis-url", default=os.environ.get("RANKER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--history", type=int, default=30_000, help="simulated impressions version 1 trains on")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--videos", type=int, default=3000)
    p.add_argument("--requests", type=int, default=1500, help="simulated users served by version 1")
    p.add_argument("--shadow-requests", type=int, default=300, help="requests while version 2 shadows, and after")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--shown", type=int, default=10, help="top_k: what a user sees and reacts to")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--quick", action="store_true", help="a small PLE (the test's size)")
    p.add_argument("--quiet-training", action="store_true")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

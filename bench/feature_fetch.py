"""What a Feast online store costs per request against the built-in Redis layout: one request's
feature fetch (its user and every candidate) through each store's `fetch`, on the same Redis, the
same simulator tables, alternated in blocks (bench.common.alternated).

    .venv-feast/bin/python -m bench.feature_fetch [--redis 127.0.0.1:6379] [--db 14] [--repeat 300]

Runs in the Feast environment (bash scripts/setup-feast.sh). Simulates the default tables (2,000
users, 3,000 videos), writes them in both layouts under a project and key prefix of its own (removed
afterwards), and times fetches of one user and 100 / 500 known candidates: first as loaded, then
after gc.freeze() as the service does at startup (service/app.py). Prints p50 / p99 and writes
bench/results/feature_fetch.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import ROOT, alternated, delete_keys, percentiles_ms, print_table, write_result
from service.features.feast_store import FeastStore, materialize_tables
from service.features.store import RedisStore, load_tables, read_table, redis_client

SIZES = (100, 500)
TIMEOUT_S = 0.5  # generous: a timeout would measure the default path, not the store


def simulate_tables(folder: Path) -> None:
    """The simulator's default user and item tables (training.data.videolog without torch: the
    tables are written by its NumPy/pandas part)."""
    from training.data import videolog

    world_log = videolog.simulate(videolog.VideoLogConfig(n_impressions=1000))
    videolog.write_feature_tables(world_log, folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis both stores read")
    p.add_argument("--db", type=int, default=14)
    p.add_argument("--repeat", type=int, default=300, help="fetches timed per store and size")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="feature-fetch-"))
    project, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        simulate_tables(work / "tables")
        repo = work / "feature_repo"
        shutil.copytree(ROOT / "examples" / "feast", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        yaml = repo / "feature_store.yaml"
        yaml.write_text(yaml.read_text().replace("project: ple_ranker", f"project: {project}"))
        os.environ["FEAST_REDIS_CONNECTION"] = f"{args.redis},db={args.db}"
        materialize_tables(repo, work / "tables", "user_features", "item_features")
        feast_store = FeastStore(repo, "user_features", "item_features", TIMEOUT_S)
        built_in = RedisStore(redis_client(f"redis://{args.redis}/{args.db}", TIMEOUT_S), prefix)
        load_tables(built_in, work / "tables")

        users = [row_id for row_id, _ in read_table(work / "tables" / "users.jsonl")]
        items = [row_id for row_id, _ in read_table(work / "tables" / "items.jsonl")]
        rng = random.Random(0)
        results, rows, collections = {}, [], {}
        full: list[list[float]] = []  # [start, seconds] of each full (generation 2) collection

        def time_full_collections(phase: str, info: dict) -> None:
            if info["generation"] == 2:
                if phase == "start":
                    full.append([time.perf_counter(), 0.0])
                else:
                    full[-1][1] = time.perf_counter() - full[-1][0]

        gc.callbacks.append(time_full_collections)
        for heap in ("as loaded", "frozen"):
            if heap == "frozen":
                gc.collect()
                gc.freeze()
            objects = len(gc.get_objects())
            full.clear()
            for n in SIZES:
                requests = [(rng.choice(users), rng.sample(items, n)) for _ in range(64)]
                same = [feast_store.fetch(*r) == built_in.fetch(*r) for r in requests[:8]]
                assert all(same), "the two stores returned different features"
                turn = iter(range(10**9))

                def fetch(store):  # keeps only the flag: kept rows would grow the heap the collector walks
                    return lambda: store.fetch(*requests[next(turn) % len(requests)]).degraded

                built_times, feast_times = alternated(fetch(built_in), fetch(feast_store), args.repeat)
                entry = results.setdefault(heap, {}).setdefault(str(n), {})
                for name, timed in (("redis (built-in)", built_times), ("feast", feast_times)):
                    assert not any(degraded for _, degraded in timed), f"{name}: a fetch degraded"
                    entry[name] = percentiles_ms([t for t, _ in timed])
                    rows.append([heap, n, name, entry[name]["p50_ms"], entry[name]["p99_ms"]])
                entry["feast_over_built_in_p50"] = entry["feast"]["p50_ms"] / entry["redis (built-in)"]["p50_ms"]
            pauses = sorted(seconds for _, seconds in full)
            collections[heap] = {"objects_tracked_at_start": objects, "full_collections": len(full),
                                 "full_collection_ms_p50": 1000 * pauses[len(pauses) // 2] if pauses else None,
                                 "fetches": 2 * len(SIZES) * args.repeat}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
        delete_keys(f"redis://{args.redis}/{args.db}", f"*{project}", f"{prefix}*")

    print_table(["heap", "candidates", "store", "p50 ms", "p99 ms"], rows)
    print("full collections:", json.dumps(collections))
    import feast

    path = write_result("feature_fetch", {
        "what": "one request's feature fetch (1 user + N known candidates) through each store's fetch, "
                "same Redis and tables, alternated blocks of 10; 'frozen': after gc.freeze(), as the service runs",
        "load": "one process, sequential fetches, nothing else running on purpose; loadavg " +
                json.dumps([round(x, 2) for x in os.getloadavg()]),
        "redis": f"{args.redis} db {args.db}",
        "feast": feast.__version__,
        "tables": {"users": len(users), "items": len(items)},
        "results": results,
        "garbage_collection": collections,
    })  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A request's feature stage (fetch the user and every candidate from Redis, then encode the model's
inputs) as it was and with each of the three changes that cut it: redis-py's C reply parser
(hiredis), the Redis store's decoded-row memo, and the item-row cache (service/ranking/itemrows.py);
then the same with the embedded (in-process) store, with and without the cache.

    python -m bench.item_rows [--models models] [--features data/features] [--repeat 300]
                              [--redis 127.0.0.1:6379] [--db 14]

Writes the feature tables to Redis under a key prefix of its own (removed afterwards). Each request
is a random user and n distinct random items of the whole table (so a cache holding the table
keeps hitting, as one holding a service's working set of items would), each candidate sending its
video_len as the benchmark clients do. The four ways run in turn, in blocks of 10 requests, on the
same requests; every way's inputs are checked equal to the plain path's first. Prints p50 / p99
per way and size and writes bench/results/item_rows.json.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import numpy as np
import orjson
import redis
from redis._parsers import _HiredisParser, _RESP2Parser

from bench.common import delete_keys, model_parser, newest_version, percentiles_ms, print_table, write_result
from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.features.store import InProcessStore, RedisStore, load_tables, read_table
from service.ranking.candidates import VIDEO_LEN, Candidates, raw_features
from service.ranking.itemrows import ItemRows
from service.schemas import RankRequest

SIZES = (100, 500, 1000)
WAYS = (
    "python parser",
    "hiredis",
    "hiredis + row memo",
    "hiredis + item-row cache",
    "hiredis + row memo + item-row cache",
    "embedded store",
    "embedded store + item-row cache",
)


def store(url: str, parser, prefix: str, memo_rows: int) -> RedisStore:
    pool = redis.ConnectionPool.from_url(url, parser_class=parser, socket_timeout=1.0)
    return RedisStore(redis.Redis(connection_pool=pool), prefix, memo_rows=memo_rows)


def main() -> int:
    p = model_parser(__doc__, repeat=300)
    p.add_argument("--redis", default="127.0.0.1:6379")
    p.add_argument("--db", type=int, default=14)
    args = p.parse_args()
    spec = ModelSpec.model_validate_json((newest_version(args.models, args.name) / "model.json").read_bytes())
    transform = FeatureTransform(spec.features)
    url, prefix = f"redis://{args.redis}/{args.db}", f"bench:{uuid.uuid4().hex[:8]}:"
    capacity = 50_000
    stores: dict[str, RedisStore | InProcessStore] = {
        way: store(url, _RESP2Parser if way == WAYS[0] else _HiredisParser, prefix, capacity if "memo" in way else 0)
        for way in WAYS if not way.startswith("embedded")}  # fmt: skip
    load_tables(stores[WAYS[0]], args.features)
    embedded = InProcessStore()
    load_tables(embedded, args.features)
    stores.update({way: embedded for way in WAYS if way.startswith("embedded")})
    users = [row_id for row_id, _ in read_table(args.features / "users.jsonl")]
    items = dict(read_table(args.features / "items.jsonl"))
    caches = {way: ItemRows(transform, capacity) for way in WAYS}
    default_len = transform.dense_defaults.get(VIDEO_LEN)

    def plain(way: str, req: RankRequest, candidates: Candidates) -> np.ndarray:
        fetched = stores[way].fetch(req.user.id, candidates.ids)
        shared, per_row, _, _ = raw_features(transform, req, candidates, fetched.user, fetched.items)
        return transform.encode(len(candidates.ids), shared, per_row).dense

    def cached(way: str, req: RankRequest, candidates: Candidates) -> np.ndarray:
        fetched = stores[way].fetch(req.user.id, candidates.ids)
        video_len, _ = candidates.video_len(fetched.items, default_len)
        encoded, _ = caches[way].encode(req, candidates, fetched.user, fetched.items, video_len)
        return encoded.dense

    stage = {way: cached if "cache" in way else plain for way in WAYS}
    rng = random.Random(0)
    results, rows = {}, []
    try:
        for n in SIZES:
            requests = []
            for _ in range(64):
                ids = rng.sample(list(items), n)
                candidates = [{"id": i, "video_len": items[i].get("video_len", 30.0)} for i in ids]
                body = {
                    "user": {"id": rng.choice(users)},
                    "context": {"network": "wifi", "hour": 21},
                    "candidates": candidates,
                }
                req = RankRequest.model_validate(orjson.loads(orjson.dumps(body)))
                requests.append((req, Candidates.of(req.candidates)))
            for req, candidates in requests:  # every way gives the plain path's inputs (and warms up)
                expected = plain(WAYS[0], req, candidates)
                for way in WAYS:
                    assert np.array_equal(stage[way](way, req, candidates), expected), way
            times: dict[str, list[float]] = {way: [] for way in WAYS}
            turn = 0
            for _ in range(-(-args.repeat // 10)):
                for way in WAYS:
                    for _ in range(10):
                        req, candidates = requests[turn % len(requests)]
                        turn += 1
                        t0 = time.perf_counter()
                        stage[way](way, req, candidates)
                        times[way].append(time.perf_counter() - t0)
            results[str(n)] = {way: percentiles_ms(times[way]) for way in WAYS}
            base = results[str(n)][WAYS[0]]["p50_ms"]
            for way in WAYS:
                r = results[str(n)][way]
                rows.append([n, way, r["p50_ms"], r["p99_ms"], base / r["p50_ms"]])
    finally:
        delete_keys(url, f"{prefix}*")
    print_table(["candidates", "way", "p50 ms", "p99 ms", "speed-up (p50)"], rows)
    path = write_result("item_rows", {
        "what": "one request's feature stage: the store's fetch of the user and every candidate, then the model's "
                "inputs; the ways in turn on the same requests, blocks of 10",
        "load": "one process, sequential requests; loadavg " + str([round(x, 2) for x in os.getloadavg()]),
        "redis": f"{args.redis} db {args.db}",
        "tables": {"users": len(users), "items": len(items)},
        "cache_rows": capacity,
        "results": results,
    })  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

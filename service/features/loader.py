"""ranker-load-features: write user/item feature tables (users.jsonl, items.jsonl) where the service
reads them.

--redis-url: the built-in layout, pipelined batches under the keys the service reads
(`<prefix>feat:user:<id>`, `<prefix>feat:item:<id>`), with a progress bar.
--feast REPO: a Feast feature repository (examples/feast/): apply its definitions, write each view's
Parquet source and materialise it into the repository's online store (needs the feast extra).
Works for the simulator's tables and any table in the same format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import redis
from tqdm import tqdm

from service.features.store import TABLES, RedisStore, read_table, redis_client


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker-load-features", description=__doc__)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--redis-url", help="the built-in layout in this Redis, e.g. redis://127.0.0.1:6379/0")
    target.add_argument("--feast", type=Path, metavar="REPO", help="a Feast feature repository (examples/feast/)")
    p.add_argument("--user-view", default="user_features", help="with --feast: the user feature view")
    p.add_argument("--item-view", default="item_features", help="with --feast: the item feature view")
    p.add_argument("--prefix", default="ranker:", help="key prefix (the service's RANKER_REDIS_PREFIX)")
    p.add_argument("--features", type=Path, default=Path("data/features"), help="folder with users.jsonl/items.jsonl")
    p.add_argument("--batch", type=int, default=1000, help="keys per pipelined round trip")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be at least 1")
    paths = {entity: args.features / filename for entity, filename in TABLES.items()}
    if not any(path.is_file() for path in paths.values()):
        p.error(f"--features {args.features}: no {' or '.join(TABLES.values())} there")
    if args.feast is not None:
        return load_into_feast(args)
    try:
        store = RedisStore(redis_client(args.redis_url, timeout_s=10.0), args.prefix)
        store.client.ping()
        total = 0
        for entity, path in paths.items():
            if not path.is_file():
                print(f"skipping {entity} features: {path} not found", file=sys.stderr)
                continue
            with tqdm(total=count_lines(path), desc=f"{entity}s", unit="rows", file=sys.stderr) as bar:
                total += store.put(entity, read_table(path), batch=args.batch, progress=bar.update)
    except (ValueError, redis.RedisError) as exc:  # a bad URL, Redis unreachable
        print(f"ranker-load-features: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as exc:  # a table line without "id" / "features"
        print(f"ranker-load-features: a table line lacks {exc} (lines are {{\"id\": ..., \"features\": {{...}}}})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"wrote {total} feature rows to {args.redis_url} under {args.prefix}feat:", file=sys.stderr)
    return 0


def load_into_feast(args: argparse.Namespace) -> int:
    from service.features.feast_store import FeastSetupError, materialize_tables

    try:
        counts = materialize_tables(args.feast, args.features, args.user_view, args.item_view)
    except FeastSetupError as exc:
        print(f"ranker-load-features: {exc}", file=sys.stderr)
        return 1
    print(f"materialised {counts} rows into the online store of {args.feast}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

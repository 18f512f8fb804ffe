"""Feature store: user and item features by id, fetched for a whole request in one round trip.

Two implementations here behind one interface, tested by one suite (a third, FeastStore, reads a
Feast online store: service/features/feast_store.py):
- InProcessStore: dicts in process memory (the embedded default), seeded from users.jsonl /
  items.jsonl ({"id": ..., "features": {...}} per line, as the simulator writes them).
- RedisStore: one string key per entity, `<prefix>feat:user:<id>` / `<prefix>feat:item:<id>`,
  holding the features as a compact JSON object; a request's user and items come back in one MGET.
  Redis being down or slow never fails a request: the fetch times out fast, every feature takes
  its default, and the result says it was degraded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("ranker.store")

Features = dict[str, object]
Row = tuple[str, Features]  # (id, features)


@dataclass(frozen=True)
class Fetched:
    user: Features | None  # None: unknown user (or degraded)
    items: list[Features | None]  # one per requested id; None: unknown item (or degraded)
    degraded: bool = False  # the store could not be read; everything is a default
    corrupt: int = 0  # rows that were not a JSON object of features; read as unknown

    @property
    def misses(self) -> int:
        return (self.user is None) + self.items.count(None)


class FeatureStore(Protocol):
    kind: str

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched: ...


class WritableStore(FeatureStore, Protocol):
    def put(self, entity: str, rows: Iterable[Row]) -> int: ...


class BackOff:
    """After a failed fetch, skip the store for `retry_after_s` instead of paying the timeout on every
    request; one warning per window, not one per request."""

    def __init__(self, name: str, retry_after_s: float = 1.0):
        self.name = name
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> bool:
        return time.monotonic() < self._down_until

    def failed(self, exc: Exception) -> None:
        with self._lock:
            if time.monotonic() >= self._down_until:
                log.warning("%s unavailable (%s); serving defaults for %.1fs", self.name, exc, self.retry_after_s)
            self._down_until = time.monotonic() + self.retry_after_s

    def reset(self) -> None:
        self._down_until = 0.0


def degraded(n_items: int) -> Fetched:
    return Fetched(None, [None] * n_items, degraded=True)


def read_table(path: Path) -> Iterator[Row]:
    """Rows of a users.jsonl / items.jsonl feature table."""
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                yield str(row["id"]), row["features"]


_ROW_TYPES = {dict, type(None)}
_UNSEEN = object()
TABLES = {"user": "users.jsonl", "item": "items.jsonl"}


def load_tables(store: WritableStore, directory: Path) -> dict[str, int]:
    counts = {}
    for entity, filename in TABLES.items():
        path = Path(directory) / filename
        if not path.is_file():
            log.warning("feature table %s not found; no %s features loaded", path, entity)
            continue
        counts[entity] = store.put(entity, read_table(path))
    return counts


class InProcessStore:
    kind = "embedded"

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Features]] = {"user": {}, "item": {}}

    def put(self, entity: str, rows: Iterable[Row]) -> int:
        table = self.tables[entity]
        n = 0
        for row_id, features in rows:
            table[row_id] = features
            n += 1
        return n

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched:
        return Fetched(self.tables["user"].get(user_id), list(map(self.tables["item"].get, item_ids)))


class RedisStore:
    kind = "redis"

    def __init__(self, client: redis.Redis, prefix: str = "ranker:", retry_after_s: float = 1.0, memo_rows: int = 0):
        self.client = client
        self.prefix = prefix
        self.backoff = BackOff("feature store", retry_after_s)
        # Item rows kept decoded, by their stored bytes: the same bytes give the same dict object, so
        # a row that has not changed costs a lookup, not a JSON parse, and the item-row cache
        # (service/ranking/itemrows.py) sees it unchanged by identity. Cleared when full; 0: off.
        self.memo_rows = memo_rows
        self._decoded: dict[bytes | None, Features | None] = {None: None}

    def key(self, entity: str, row_id: str) -> str:
        return f"{self.prefix}feat:{entity}:{row_id}"

    def put(self, entity: str, rows: Iterable[Row], batch: int = 1000, progress=None) -> int:
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for row_id, features in rows:
            pipe.set(self.key(entity, row_id), orjson.dumps(features))
            n += 1
            if n % batch == 0:
                pipe.execute()
                if progress:
                    progress(batch)
        pipe.execute()
        if progress and n % batch:
            progress(n % batch)
        return n

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched:
        if self.backoff.waiting:
            return degraded(len(item_ids))
        keys = [self.key("user", user_id)] + [self.key("item", i) for i in item_ids]
        try:
            values = self.client.mget(keys)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.backoff.failed(exc)
            return degraded(len(item_ids))
        try:
            user = orjson.loads(values[0]) if values[0] is not None else None
            items = self._items(values[1:])
            if set(map(type, items)) | {type(user)} <= _ROW_TYPES:  # C-level check of every row
                return Fetched(user, items)
        except orjson.JSONDecodeError:
            pass
        return self._salvaged(keys, values)

    def _items(self, values: list[bytes | None]) -> list:
        """Decoded item rows, through the memo where it is on."""
        if not self.memo_rows:
            return [orjson.loads(v) if v is not None else None for v in values]
        memo = self._decoded
        try:
            return list(map(memo.__getitem__, values))  # every row seen before: one C-level pass
        except KeyError:
            pass
        if len(memo) > self.memo_rows:
            memo.clear()
            memo[None] = None
        rows = []
        for value in values:
            row = memo.get(value, _UNSEEN)
            if row is _UNSEEN:
                row = orjson.loads(value)
                if type(row) is dict:  # a corrupt row is never remembered: _salvaged reports it
                    memo[value] = row
            rows.append(row)
        return rows

    @staticmethod
    def _salvaged(keys: list[str], values: list[bytes | None]) -> Fetched:
        """Rows decoded one by one: one that is not a JSON object of features (written by a broken
        loader, or by hand) is read as an unknown id, not a failed request."""
        rows: list[Features | None] = []
        bad = []
        for key, value in zip(keys, values):
            row = None
            if value is not None:
                try:
                    row = orjson.loads(value)
                except orjson.JSONDecodeError:
                    pass
                if type(row) is not dict:
                    row = None
                    bad.append(key)
            rows.append(row)
        log.warning("feature store: %d corrupt rows read as unknown, e.g. %s", len(bad), bad[0])
        return Fetched(rows[0], rows[1:], corrupt=len(bad))


def redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client whose every call gives up after timeout_s (connect and read)."""
    # No retries: a slow or absent Redis must cost one timeout, not several.
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )

"""Feature store: user and item features by id, fetched for a whole request at once.

The embedded store lives in process memory, loaded from users.jsonl / items.jsonl
({"id": ..., "features": {...}} per line, as the simulator writes them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

log = logging.getLogger("ranker.store")

Features = dict[str, object]


@dataclass(frozen=True)
class Fetched:
    user: Features | None  # None: unknown user
    items: list[Features | None]  # one per requested id; None: unknown item

    @property
    def misses(self) -> int:
        return (self.user is None) + sum(item is None for item in self.items)


class FeatureStore(Protocol):
    kind: str

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched: ...


class InProcessStore:
    kind = "embedded"

    def __init__(self, users: dict[str, Features] | None = None, items: dict[str, Features] | None = None):
        self.users = users or {}
        self.items = items or {}

    @classmethod
    def from_dir(cls, directory: Path | None) -> "InProcessStore":
        store = cls()
        if directory is None:
            return store
        for filename, table in (("users.jsonl", store.users), ("items.jsonl", store.items)):
            path = Path(directory) / filename
            if not path.is_file():
                log.warning("feature table %s not found; that side starts empty", path)
                continue
            with open(path) as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        table[str(row["id"])] = row["features"]
        log.info("embedded feature store: %d users, %d items", len(store.users), len(store.items))
        return store

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched:
        items = self.items
        return Fetched(self.users.get(user_id), [items.get(i) for i in item_ids])

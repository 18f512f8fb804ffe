"""ranker-log-sink: the impression log and the feedback stream, from Redis into Parquet files.

The service writes sampled impressions (`<prefix>log:impressions`, contract.impressions) and
feedback events (`<prefix>log:feedback`, POST /v1/feedback) to Redis Streams. The sink reads each
with a consumer group (`ranker-log-sink`): Redis delivers an entry at least once, until the sink
acknowledges it, so a sink that dies loses nothing. Exactly once in the files, by a commit per batch:

1. a batch of entries becomes its files, each written under a temporary name and renamed into
   place: impressions one file per model version (its feature columns), `impressions/<model>/
   <version>/<consumer>-<batch>.parquet`, one row per candidate (contract.impressions.rows);
   feedback `feedback/<consumer>-<batch>.parquet`; `<batch>` is the batch's last entry id;
2. the commit file `_commits/<stream>-<consumer>` takes that id (written and renamed);
3. the entries are acknowledged.

A sink restarted after dying anywhere in between removes its files of batches past its commit,
then reads its unacknowledged entries again: those up to the commit are in files already and are
only acknowledged, the rest are written again. Several sinks may share a group under different
`--consumer` names. Entries that are not a record are logged, counted and acknowledged.

    ranker-log-sink --redis-url redis://127.0.0.1:6379/0 --out logs [--prefix ranker:] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import threading
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from contract import impressions as imp

log = logging.getLogger("ranker.logsink")

GROUP = "ranker-log-sink"
STREAMS = {"impressions": imp.IMPRESSIONS_STREAM, "feedback": imp.FEEDBACK_STREAM}
TYPES = {imp.REQUEST_ID: pa.string(), imp.TIME: pa.float64(), imp.USER_ID: pa.string(), imp.MODEL: pa.string(),
         imp.VERSION: pa.int64(), imp.ITEM_ID: pa.string(), imp.POSITION: pa.int64(), imp.SCORE: pa.float64(),
         imp.RETURNED: pa.bool_()}  # fmt: skip
FEEDBACK_COLUMNS = {"request_id": pa.string(), "item_id": pa.string(), "task": pa.string(), "value": pa.float64(),
                    "time": pa.float64()}  # fmt: skip


def entry_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def write_atomically(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)  # a reader never sees half a file


def impression_table(records: list[dict]) -> pa.Table:
    """Records of one model version, one row per candidate; a column a record lacks is null there."""
    parts = [imp.rows(record) for record in records]
    sizes = [len(part[imp.ITEM_ID]) for part in parts]
    arrays = {}
    for name in sorted(set().union(*parts)):
        values = [v for part, size in zip(parts, sizes) for v in part.get(name, [None] * size)]
        if name in TYPES:
            arrays[name] = pa.array(values, TYPES[name])
        elif name.startswith(imp.OUTPUT):
            arrays[name] = pa.array(values, pa.float64())
        else:
            arrays[name] = pa.array(imp.storable(values))
    return pa.table(arrays)


class Sink:
    def __init__(self, client: redis.Redis, out: Path, prefix: str = "ranker:", consumer: str = "sink1",
                 batch: int = 1000, block_ms: int = 1000):  # fmt: skip
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", consumer):  # no "-": a file's consumer prefix stays unambiguous
            raise ValueError(f"consumer names are letters, digits and _ (at most 64): {consumer!r}")
        self.client, self.out, self.prefix, self.consumer = client, Path(out), prefix, consumer
        self.batch, self.block_ms = batch, block_ms
        self.committed = {kind: self._recover(kind) for kind in STREAMS}
        self.pending = dict.fromkeys(STREAMS, True)  # read this consumer's unacknowledged entries first
        self.counts: dict[str, int] = defaultdict(int)
        for kind in STREAMS:
            try:
                self.client.xgroup_create(self.key(kind), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def key(self, kind: str) -> str:
        return self.prefix + STREAMS[kind]

    def _commit_file(self, kind: str) -> Path:
        return self.out / "_commits" / f"{kind}-{self.consumer}"

    def _recover(self, kind: str) -> tuple[int, int]:
        """The last committed entry id; files of later batches (died before their commit) removed."""
        commit = self._commit_file(kind)
        committed = entry_id(commit.read_text().strip()) if commit.exists() else (0, 0)
        root = self.out / kind
        for path in root.rglob(f"{self.consumer}-*") if root.exists() else []:
            batch = path.name[len(self.consumer) + 1:].split(".")[0]
            if path.name.endswith(".tmp") or entry_id(batch) > committed:
                log.warning("removing %s: written after the last commit; its entries are read again", path)
                path.unlink()
        return committed

    def run_once(self) -> int:
        """Read, write and acknowledge one batch per stream; returns the entries handled."""
        handled = 0
        for kind in STREAMS:
            entries = self._read(kind)
            if entries:
                self._handle(kind, entries)
                handled += len(entries)
        return handled

    def _read(self, kind: str) -> list:
        """This consumer's unacknowledged entries while there are any (an earlier run's), then new ones."""
        if self.pending[kind]:
            answer = self.client.xreadgroup(GROUP, self.consumer, {self.key(kind): "0"}, count=self.batch)
            if answer and answer[0][1]:
                return answer[0][1]
            self.pending[kind] = False
        answer = self.client.xreadgroup(GROUP, self.consumer, {self.key(kind): ">"}, count=self.batch,
                                        block=self.block_ms)  # fmt: skip
        return answer[0][1] if answer else []

    def _handle(self, kind: str, entries: list) -> None:
        ids = [raw_id for raw_id, _ in entries]
        fresh = [(raw_id, fields) for raw_id, fields in entries if entry_id(raw_id) > self.committed[kind]]
        if fresh:
            last = fresh[-1][0].decode() if isinstance(fresh[-1][0], bytes) else fresh[-1][0]
            for path, table in self._files(kind, fresh, last):
                write_atomically(path, table)
            self._commit(kind, last)
        self.client.xack(self.key(kind), GROUP, *ids)
        self.counts[kind] += len(fresh)

    def _commit(self, kind: str, last: str) -> None:
        commit = self._commit_file(kind)
        commit.parent.mkdir(parents=True, exist_ok=True)
        commit.with_name(commit.name + ".tmp").write_text(last)
        os.replace(commit.with_name(commit.name + ".tmp"), commit)
        self.committed[kind] = entry_id(last)

    def _files(self, kind: str, entries: list, last: str) -> list[tuple[Path, pa.Table]]:
        parsed = []
        for raw_id, fields in entries:
            try:
                parsed.append(json.loads(fields[b"record" if kind == "impressions" else b"event"]))
            except (KeyError, TypeError, ValueError) as exc:  # TypeError: trimmed away (MAXLEN) before it was read
                self.counts[f"{kind}_unreadable"] += 1
                log.error("%s entry %s is not a record (%r); acknowledged and skipped", kind, raw_id, exc)
        if not parsed:
            return []
        if kind == "feedback":
            table = pa.table({name: pa.array([e.get(name) for e in parsed], dtype)
                              for name, dtype in FEEDBACK_COLUMNS.items()})  # fmt: skip
            return [(self.out / "feedback" / f"{self.consumer}-{last}.parquet", table)]
        by_version: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for record in parsed:
            by_version[(record["model"], record["version"])].append(record)
        return [(self.out / "impressions" / model / str(version) / f"{self.consumer}-{last}.parquet",
                 impression_table(records)) for (model, version), records in by_version.items()]  # fmt: skip

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_once()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default=os.environ.get("RANKER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--prefix", default=os.environ.get("RANKER_REDIS_PREFIX", "ranker:"))
    p.add_argument("--out", type=Path, default=Path("logs"))
    p.add_argument("--consumer", default="sink1",
                   help="this sink's name in the group: letters, digits, _ (one name per running sink)")
    p.add_argument("--batch", type=int, default=1000, help="entries per file at most")
    p.add_argument("--block-ms", type=int, default=1000, help="how long a read waits for new entries")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sink = Sink(redis.Redis.from_url(args.redis_url), args.out, args.prefix, args.consumer, args.batch, args.block_ms)
    log.info("draining %s into %s as %s/%s", [sink.key(k) for k in STREAMS], args.out, GROUP, args.consumer)
    sink.run(stop)
    log.info("stopped: %s", dict(sink.counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving-time feature logging: for a sampled share of /v1/rank requests, what the model saw and
said, written to a Redis Stream off the request path.

A record (contract.impressions, the format training reads back) holds the request id, the time, the user id, the model and version, the raw feature
values after the store lookup and the defaults (exactly what the feature transform encoded:
`shared` for the user and context, `per_row` per candidate, in the request's candidate order),
each candidate's id and position in the answer, each task's output and the score. Re-encoding a
record with the version's transform gives the model's inputs bit for bit (tests/test_featurelog.py):
training on logged rows trains on what was served, not on a re-derivation of it.

A sampled request builds the record and offers it to a bounded queue; a background thread XADDs it to the
stream `<prefix>log:impressions`, capped near `RANKER_LOG_STREAM_MAXLEN` entries (MAXLEN ~). A full
queue (Redis slow) or a failed write (Redis down) drops the record and counts it
(`ranker_feature_log_records_total{outcome}`); the ranking is never delayed or failed by it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time

import orjson
import redis

from contract.impressions import IMPRESSIONS_STREAM
from service.observability.metrics import Metrics

log = logging.getLogger("ranker.featurelog")

STREAM = IMPRESSIONS_STREAM


class FeatureLog:
    def __init__(self, client: redis.Redis, prefix: str, sample: float, maxlen: int, queue_size: int, metrics: Metrics):
        self.client, self.key, self.sample, self.maxlen, self.metrics = client, f"{prefix}{STREAM}", sample, maxlen, metrics
        self._queue: queue.Queue[dict] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._drain, name="feature-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return random.random() < self.sample

    def offer(self, record: dict) -> None:
        """Queue a record for the stream; never blocks (a full queue drops it, counted)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.metrics.feature_log.labels("queue_full").inc()

    def _drain(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            try:
                record = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.client.xadd(self.key, {"record": orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)},
                                 maxlen=self.maxlen, approximate=True)  # fmt: skip
                self.metrics.feature_log.labels("written").inc()
            except redis.RedisError as exc:
                self.metrics.feature_log.labels("redis_error").inc()
                if time.monotonic() - self._last_warning > 60:  # one line a minute, not one per record
                    self._last_warning = time.monotonic()
                    log.warning("feature log: records dropped, Redis write failed (%s)", exc)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after writing what is queued (at most `timeout` seconds)."""
        self._stop.set()
        self._thread.join(timeout)

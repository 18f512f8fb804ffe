"""Shadow scoring: a sampled request is scored again by the model's shadow version, off the request
path, and the two answers are compared (service.lifecycle.shadows says which version shadows).

The request offers a job to a bounded queue and goes on; a worker thread assembles the raw
features with the shadow's own transform from the same request and the same fetched rows (no
second store lookup), runs the shadow, ranks with the request's weights and video_len transform,
and records per (serving, shadow) pair: how much of the served top 10 the shadow's top 10 holds,
the Spearman correlation of the two orders of all candidates, each common task's mean absolute
difference, and the shadow's inference time. A full queue skips the shadow; a shadow that raises
is logged and counted; neither touches the client's answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from contract.scoring import rank
from service.lifecycle.repository import ModelVersion
from service.observability.metrics import Metrics
from service.ranking.candidates import Candidates, raw_features
from service.schemas import RankRequest

log = logging.getLogger("ranker.shadow")

TOP = 10


@dataclass(frozen=True)
class ShadowJob:
    serving: ModelVersion
    shadow: ModelVersion
    req: RankRequest
    candidates: Candidates
    stored_user: dict[str, Any] | None
    stored_items: Sequence[dict[str, Any] | None]
    served: dict[str, np.ndarray]  # the serving version's per-task outputs
    served_log_score: np.ndarray
    weights: dict[str, float]  # what the request ranked by (defaults with its overrides)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors: 1.0 for fewer than two candidates; where either is
    constant (no order to correlate), 1.0 if both are the same vector, else 0.0."""
    if len(a) < 2:
        return 1.0
    if np.all(a == a[0]) or np.all(b == b[0]):
        return 1.0 if np.array_equal(a, b) else 0.0
    ranks_a = np.argsort(np.argsort(a)).astype(np.float64)
    ranks_b = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = TOP) -> float:
    """Share of a's top k (highest scores) that is also in b's top k."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    top_a = np.argpartition(-a, k - 1)[:k] if k < len(a) else np.arange(len(a))
    top_b = np.argpartition(-b, k - 1)[:k] if k < len(b) else np.arange(len(b))
    return len(np.intersect1d(top_a, top_b)) / k


class ShadowScorer:
    def __init__(self, metrics: Metrics, queue_size: int = 64):
        self.metrics = metrics
        self._queue: queue.Queue[ShadowJob] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._drain, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, job: ShadowJob) -> None:
        """Queue a job; never blocks (a full queue skips the shadow, counted)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.metrics.shadow_requests.labels(job.serving.name, "queue_full").inc()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.compare(job)
            except Exception as exc:  # a shadow must never take the worker down
                self.metrics.shadow_requests.labels(job.serving.name, "failed").inc()
                if time.monotonic() - self._last_warning > 60:  # one line a minute, not one per request
                    self._last_warning = time.monotonic()
                    log.warning("shadow %s/%s failed: %r", job.shadow.name, job.shadow.version, exc)

    def compare(self, job: ShadowJob) -> None:
        shadow, req = job.shadow, job.req
        shared, per_row, video_len, _ = raw_features(shadow.transform, req, job.candidates, job.stored_user,
                                                     job.stored_items)  # fmt: skip
        inputs = shadow.transform.encode(len(job.candidates.ids), shared, per_row).as_inputs()
        t0 = time.perf_counter()
        outputs = shadow.engine.run_background(inputs)
        self.metrics.shadow_inference.labels(shadow.name, str(shadow.version)).observe(time.perf_counter() - t0)
        values = {t.name: outputs[t.output] for t in shadow.spec.tasks}
        weights = {**shadow.spec.scoring.weights, **{t: w for t, w in job.weights.items() if t in values}}
        transform = req.video_len_transform or job.serving.spec.scoring.video_len_transform
        ranking = rank(values, weights, video_len, transform, shadow.spec.scoring.eps)

        pair = (job.serving.name, str(job.serving.version), str(shadow.version))
        self.metrics.shadow_overlap.labels(*pair).observe(top_overlap(job.served_log_score, ranking.log_score))
        self.metrics.shadow_correlation.labels(*pair).observe(spearman(job.served_log_score, ranking.log_score))
        for task in job.served.keys() & values.keys():
            diff = np.abs(np.asarray(job.served[task], np.float64) - np.asarray(values[task], np.float64))
            self.metrics.shadow_difference.labels(*pair, task).observe(float(diff.mean()) if len(diff) else 0.0)
        self.metrics.shadow_requests.labels(shadow.name, "scored").inc()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

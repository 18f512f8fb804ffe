"""One validated settings object; every field also comes from a RANKER_* environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="forbid")

    models_dir: Path = Path("models")
    features_dir: Path | None = Path("data/features")  # users.jsonl / items.jsonl for the embedded store
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    redis_url: str | None = None  # features and control plane in Redis; None: embedded, in process
    # Where user and item features come from: `auto` is Redis when redis_url is set, else the embedded
    # tables of features_dir; `embedded` keeps the tables in process even with Redis as control plane
    # (each worker process holds its own copy); `feast` reads a Feast online store (feast_repo; needs the
    # feast extra, service/features/feast_store.py).
    feature_store: Literal["auto", "redis", "embedded", "feast"] = "auto"
    feast_repo: Path | None = None  # the Feast feature repository (its feature_store.yaml) for feature_store feast
    feast_user_view: str = "user_features"  # the feature view keyed by the user id
    feast_item_view: str = "item_features"  # the feature view keyed by the item id
    redis_prefix: str = "ranker:"
    # Encoded item rows kept per loaded version (service/ranking/itemrows.py), and item rows the Redis
    # store keeps decoded: a request gathers the rows of items it has seen instead of encoding them
    # again. Cleared when full; 0 turns both off. docs/performance.md, "Item-row cache".
    item_cache_rows: int = Field(50_000, ge=0)
    # A feature fetch gives up after this and the request degrades (the Feast store's Redis client too).
    redis_timeout_ms: float = Field(20.0, gt=0)
    control_resync_s: float = Field(5.0, gt=0)  # replicas re-read the control keys at least this often
    # Serving-time feature log (service.features.featurelog): the share of /v1/rank requests whose features,
    # outputs and order go to the Redis Stream <prefix>log:impressions (0: none). Needs redis_url.
    log_sample: float = Field(0.0, ge=0, le=1)
    log_stream_maxlen: int = Field(1_000_000, ge=1)  # the stream is capped near this many records
    log_queue: int = Field(1024, ge=1)  # records waiting for Redis; past it they are dropped and counted
    # Shadow scoring (docs/lifecycle.md#shadow-versions): sampled requests waiting for the shadow version;
    # past it the shadow is skipped and counted, the request never waits.
    shadow_queue: int = Field(64, ge=1)
    # The watcher loads version folders that appear: `explicit` waits for an admin call, `auto` also
    # routes to a newer one with the same interface, `off` does not watch. explicit by default: a
    # folder written to the repository (a test run, a staged candidate) must not take production
    # traffic by itself, nor end an A/B split; scripts/quickstart.sh asks for auto.
    watch: Literal["auto", "explicit", "off"] = "explicit"
    watch_interval_s: float = Field(2.0, gt=0)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    admin_token: SecretStr | None = None
    default_model: str | None = None  # model used when a request names none (default: "ple", else the first)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Serving processes per container (or pod). With 1, everything lives in one process and Redis is
    # optional. With N > 1, ranker-serve starts N worker processes on one socket, each a replica of
    # the others: routing goes through the Redis control plane (so redis_url is required), every
    # worker's watcher loads new folders itself (so watch cannot be off), and the metrics are summed
    # over the workers (prometheus-client's multiprocess mode). docs/performance.md, "Worker processes".
    workers: int = Field(1, ge=1, le=64)
    # The workers' event loop: uvloop (service.workers.FairAcceptLoop) where it is installed, or
    # asyncio's own, which costs more Python per request (docs/performance.md, "Worker processes").
    worker_loop: Literal["uvloop", "asyncio"] = "uvloop"

    # ONNX Runtime threads for a lone call: 0 lets ORT pick (one per physical core).
    intra_op_threads: int = Field(0, ge=0)
    # On CPU, calls that start while another is running go to a second, one-thread session: a lone
    # request keeps every core (lowest sequential latency), concurrent ones get a core each instead
    # of oversubscribing them (highest throughput). Before it, 0 vs 1 thread traded one for the
    # other (bench/README.md). Costs a second copy of the weights per loaded version.
    adaptive_threads: bool = True
    # With RANKER_WORKERS > 1: a call of fewer candidates runs on the one-thread session even when no
    # worker has another call in flight (a second core is another worker's). docs/performance.md.
    wide_call_min_rows: int = Field(256, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    # On CUDA, batches are padded up to one of these sizes so shapes repeat (and warm up once each).
    batch_buckets: list[int] = Field(default_factory=lambda: [16, 64, 256, 1024, 4096])
    # IO binding: each bucket's inputs/outputs preallocated on the device and bound once. auto = on CUDA only.
    io_binding: Literal["auto", "on", "off"] = "auto"
    # One CUDA graph per bucket (needs IO binding, which it turns on); ignored on CPU.
    cuda_graph: bool = False

    # Request limits: past them a 413 (body) or 422 (counts) names what was too large.
    max_candidates: int = Field(2000, ge=1)
    max_body_bytes: int = Field(4 << 20, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0)  # the whole body must arrive within this (408 otherwise)
    max_features: int = Field(256, ge=1)  # per user, context or candidate
    # Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive, 5 by default).
    # Longer than the idle expiry of the clients and proxies that reuse connections (httpx 5 s,
    # Node 4 s, nginx upstream keepalive and AWS ALB 60 s): one that closes first can close a
    # connection at the moment a client reuses it, and that request gets no answer
    # (docs/reliability.md, "Keep-alive").
    keep_alive_s: int = Field(75, ge=1)
    # Where /v1/rank runs: `loop`, on the event loop (no thread hand-off; the loop waits for the
    # rank's few ms), or `pool`, in the thread pool (the loop keeps reading other requests meanwhile).
    # Measured on CPU in docs/performance.md ("Where the rank route runs").
    rank_thread: Literal["loop", "pool"] = "loop"

    @field_validator("features_dir", "redis_url", "admin_token", "default_model", "feast_repo", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        # RANKER_REDIS_URL= (empty) in a compose file or shell means "not set", not "the path ''".
        return None if v == "" else v

    @model_validator(mode="after")
    def _log_needs_redis(self) -> "Settings":
        if self.log_sample > 0 and not self.redis_url:
            raise ValueError("log_sample > 0 writes the feature log to a Redis Stream: set RANKER_REDIS_URL too")
        return self

    @model_validator(mode="after")
    def _redis_store_needs_redis(self) -> "Settings":
        if self.feature_store == "redis" and not self.redis_url:
            raise ValueError("feature_store redis reads features from Redis: set RANKER_REDIS_URL too")
        if self.feature_store == "feast" and self.feast_repo is None:
            raise ValueError("feature_store feast reads a Feast feature repository: set RANKER_FEAST_REPO too")
        return self

    @model_validator(mode="after")
    def _workers_share_through_redis(self) -> "Settings":
        if self.workers > 1 and not self.redis_url:
            raise ValueError("workers > 1 runs each worker as a replica that takes its routing from the Redis control "
                             "plane: set RANKER_REDIS_URL too (or RANKER_WORKERS=1)")
        if self.workers > 1 and self.watch == "off":
            raise ValueError("workers > 1 needs RANKER_WATCH explicit or auto: an admin load reaches one worker, and "
                             "each worker's watcher loads new version folders for itself")
        return self

    @field_validator("batch_buckets")
    @classmethod
    def _sorted_positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch_buckets must be positive sizes")
        return sorted(set(v))

"""Feast as the feature store: the service reads user and item features from a Feast online store
(RANKER_FEATURE_STORE=feast, RANKER_FEAST_REPO=<feature repository>), and `ranker-load-features
--feast` materialises users.jsonl / items.jsonl into one.

Feast is an optional dependency (`pip install 'ple-ranker[cpu,feast]'`): it pins pandas<3 and
prometheus-client<0.25, so it lives in its own environment, and this module imports it only when
used. The repository names two feature views, one keyed by the user and one by the item, whose
field names are the model's feature names (examples/feast/ is the simulator's).

The degrade rules are the built-in Redis store's: a failed or slow read serves every feature's
default for the request, is counted (ranker_degraded_requests_total{reason="feature_store"}) and
backs off for a second. For a Redis online store the service sets the client's socket timeouts to
RANKER_REDIS_TIMEOUT_MS and turns off redis-py's retries (three, with back-off of up to seconds),
unless the repository's connection string sets them itself.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from service.features.store import TABLES, BackOff, Features, Fetched, degraded, read_table

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("ranker.store")

INSTALL_HINT = "install the feast extra in the service's environment: pip install 'ple-ranker[cpu,feast]'"


class FeastSetupError(RuntimeError):
    """The Feast repository or package cannot serve: said at startup, never per request."""


# feast.metrics, imported by the online read path, points prometheus-client's multiprocess mode at
# a temporary folder of its own when these are unset, and this service's /metrics then read that
# empty folder. Feast's metrics are off unless its feature_store.yaml turns them on.
_PROMETHEUS_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


def _feast():
    saved = {name: os.environ.get(name) for name in _PROMETHEUS_VARIABLES}
    try:
        import feast
        import feast.metrics  # noqa: F401 (imported here, under the saved environment)
    except ImportError as exc:
        raise FeastSetupError(f"the feast package is not installed: {INSTALL_HINT}") from exc
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return feast


def open_repository(repo: Path):
    """feast.FeatureStore for a feature repository folder, with a clear error for the usual mistakes."""
    feast = _feast()
    if not (Path(repo) / "feature_store.yaml").is_file():
        raise FeastSetupError(f"{repo}: no feature_store.yaml there (a Feast feature repository; examples/feast/)")
    store = feast.FeatureStore(repo_path=str(repo))
    online = store.config.online_store
    connection = getattr(online, "connection_string", "")
    if "${" in connection:
        raise FeastSetupError(f"{repo}/feature_store.yaml: the online store's connection_string {connection!r} "
                              "names an environment variable that is not set")  # fmt: skip
    return store


def with_client_limits(connection_string: str, timeout_s: float) -> str:
    """A Redis online store's connection string with socket timeouts and no retries, where it does
    not set them itself: one slow Redis must cost a request one timeout, not four and a back-off."""
    given = {part.split("=", 1)[0] for part in connection_string.split(",") if "=" in part}
    limits = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": "null"}
    return ",".join([connection_string] + [f"{k}={v}" for k, v in limits.items() if k not in given])


@dataclass(frozen=True)
class View:
    """One feature view as the store reads it: its join key and its fields' references."""

    name: str
    join_key: str
    fields: tuple[str, ...]

    @property
    def references(self) -> list[str]:
        return [f"{self.name}:{field}" for field in self.fields]


def view_of(store, name: str) -> View:
    feast = _feast()
    try:
        view = store.get_feature_view(name)
    except feast.errors.FeatureViewNotFoundException as exc:
        raise FeastSetupError(f"feature view {name!r} is not in the repository's registry: {exc}") from exc
    keys = [column.name for column in view.entity_columns]
    if len(keys) != 1:
        raise FeastSetupError(f"feature view {name!r} has join keys {keys}: the service reads views keyed by one id")
    return View(name, keys[0], tuple(field.name for field in view.features))


class FeastStore:
    """Raises FeastSetupError, naming the problem, when the package, the repository or a view is missing."""

    kind = "feast"

    def __init__(self, repo: Path, user_view: str, item_view: str, timeout_s: float, retry_after_s: float = 1.0):
        self.store = open_repository(repo)
        online = self.store.config.online_store
        if getattr(online, "type", None) == "redis":  # the client is built on the first read, from this string
            online.connection_string = with_client_limits(online.connection_string, timeout_s)
        self.user = view_of(self.store, user_view)
        self.item = view_of(self.store, item_view)
        self.backoff = BackOff("feature store (Feast)", retry_after_s)

    @classmethod
    def of(cls, settings: "Settings") -> "FeastStore":
        """The store RANKER_FEATURE_STORE=feast serves from: its repository, views and timeout."""
        return cls(settings.feast_repo, settings.feast_user_view, settings.feast_item_view,
                   settings.redis_timeout_ms / 1000)  # fmt: skip

    def fetch(self, user_id: str, item_ids: Sequence[str]) -> Fetched:
        if self.backoff.waiting:
            return degraded(len(item_ids))
        try:
            user = self._rows(self.user, [user_id])[0]
            items = self._rows(self.item, item_ids)
        except Exception as exc:  # noqa: BLE001 (whatever the online store raises, the request is served on defaults)
            self.backoff.failed(exc)
            return degraded(len(item_ids))
        return Fetched(user, items)

    def _rows(self, view: View, ids: Sequence[str]) -> list[Features | None]:
        """One row per id: its non-null features, or None for an id the store does not know."""
        if not ids:
            return []
        columns = self.store.get_online_features(
            features=view.references, entity_rows=[{view.join_key: i} for i in ids]
        ).to_dict()
        rows: list[Features | None] = []
        for values in zip(*(columns[field] for field in view.fields)):
            row = {field: value for field, value in zip(view.fields, values) if value is not None}
            rows.append(row or None)  # Feast answers an unknown id with nulls in every field
        return rows


# ---- materialising the feature tables (ranker-load-features --feast) ----

_PANDAS_TYPES = {"STRING": "object", "FLOAT64": "float64", "FLOAT32": "float32", "INT64": "Int64",
                 "INT32": "Int32", "BOOL": "boolean"}  # fmt: skip


def apply_definitions(repo: Path) -> None:
    """`feast apply` for the repository: register its entities and feature views."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo = Path(repo).resolve()
    config = load_repo_config(repo, repo / "feature_store.yaml")
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))  # Feast imports the definition files as top-level modules
    try:
        apply_total(config, repo, skip_source_validation=True)  # changes directory to the repository
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))


def write_source(store, repo: Path, view: View, table: Path, now: datetime) -> int:
    """The view's Parquet source from a users.jsonl / items.jsonl table, every row stamped `now`."""
    import pandas as pd

    feature_view = store.get_feature_view(view.name)
    records = [{view.join_key: row_id, **{f: features.get(f) for f in view.fields}}
               for row_id, features in read_table(table)]  # fmt: skip
    frame = pd.DataFrame.from_records(records, columns=[view.join_key, *view.fields])
    for field in feature_view.features:
        frame[field.name] = frame[field.name].astype(_PANDAS_TYPES.get(field.dtype.to_value_type().name, "object"))
    frame[feature_view.batch_source.timestamp_field] = pd.Timestamp(now)
    path = Path(feature_view.batch_source.path)
    path = path if path.is_absolute() else Path(repo) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return len(frame)


def materialize_tables(repo: Path, features_dir: Path, user_view: str, item_view: str) -> dict[str, Any]:
    """Apply the repository, write each view's Parquet source from the tables in `features_dir`, and
    materialise them into the online store. Returns the rows written per entity."""
    repo = Path(repo).resolve()
    store = open_repository(repo)  # the clear errors before anything is written
    apply_definitions(repo)
    store.refresh_registry()  # the views apply_definitions just registered
    now = datetime.now(timezone.utc)
    counts, views = {}, []
    for entity, name in (("user", user_view), ("item", item_view)):
        table = Path(features_dir) / TABLES[entity]
        if not table.is_file():
            log.warning("feature table %s not found; no %s features materialised", table, entity)
            continue
        counts[entity] = write_source(store, repo, view_of(store, name), table, now)
        views.append(name)
    if views:
        store.materialize(start_date=now - timedelta(seconds=1), end_date=now + timedelta(seconds=1),
                          feature_views=views)  # fmt: skip
    return counts

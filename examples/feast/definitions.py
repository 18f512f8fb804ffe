"""Feast definitions for the simulator's feature tables (training/data/videolog.py writes them as
users.jsonl / items.jsonl; `ranker-load-features --feast` turns them into these Parquet sources and
materialises them into the online store).

The view names are the service's defaults (RANKER_FEAST_USER_VIEW, RANKER_FEAST_ITEM_VIEW); the
field names are the model's feature names, so a model trained on the simulator reads them as they are.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="a viewer")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="a video")

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=3650),  # the simulator's tables are static; materialise reads every row
    schema=[
        Field(name="age_bucket", dtype=String),
        Field(name="gender", dtype=String),
        Field(name="city_tier", dtype=String),
        Field(name="device", dtype=String),
        Field(name="user_watch_minutes", dtype=Float64),
    ],
    source=FileSource(path="data/users.parquet", timestamp_field="event_timestamp"),
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="category", dtype=String),
        Field(name="author_tier", dtype=String),
        Field(name="video_len", dtype=Float64),
        Field(name="video_age_days", dtype=Float64),
        Field(name="author_followers", dtype=Float64),
    ],
    source=FileSource(path="data/items.parquet", timestamp_field="event_timestamp"),
)

"""Parquet schemas of the data contract (README, "Contracts between the parts"), defined once."""
from __future__ import annotations

import pyarrow as pa

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.int64()),
    ("raw_id", pa.string()),
    ("title", pa.string()),
    ("year", pa.int64()),
    ("genres", pa.list_(pa.string())),
    ("text", pa.string()),
])
USERS_SCHEMA = pa.schema([("user_id", pa.int64()), ("raw_id", pa.string())])
SEQUENCES_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_ids", pa.list_(pa.int64())),
    ("timestamps", pa.list_(pa.int64())),
])
TARGET_SCHEMA = SEQUENCES_SCHEMA.append(pa.field("target", pa.int64()))
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_SCHEMAS = {"train": SEQUENCES_SCHEMA, "valid": TARGET_SCHEMA, "test": TARGET_SCHEMA}
# retrieval / scoring output: one row per user, items best first, their scores
CANDIDATES_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_ids", pa.list_(pa.int64())),
    ("scores", pa.list_(pa.float32())),
])

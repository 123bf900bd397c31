"""A multi-step pipeline written against the datapipe 0.15 API, run by 0.15 and by us.

``tests/adopt/build_015.py`` runs it with datapipe-core 0.15.0 (in its own virtualenv) to
produce a 0.15 metadata database; the tests then load this same module with our package,
adopt that database and run it. ``ADOPT_DB_URL`` names the database (data and metadata).

item (ingested with ``store_chunk``) --double--> doubled
item --explode_tags--> item_tag (one row per tag) --count_tags (+ label) --> tag_count
gen_labels (BatchGenerate) --> label
"""

import os

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

TAGS = 5


def _db_url() -> str:
    url = os.environ["ADOPT_DB_URL"]
    try:  # our package talks to PostgreSQL through psycopg 3, datapipe 0.15 through psycopg2
        import psycopg  # noqa: F401

        return url.replace("postgresql://", "postgresql+psycopg://")
    except ImportError:
        return url.replace("postgresql://", "postgresql+psycopg2://")


def items(ids, offset: int = 0) -> pd.DataFrame:
    """The ingested records: ``value`` drives the tag of each item."""
    ids = pd.Series(list(ids), dtype="int64")
    return pd.DataFrame({"id": ids, "name": "item " + ids.astype(str), "value": ids * 3 + offset})


def gen_labels():
    yield pd.DataFrame({"tag": [f"mod{i}" for i in range(TAGS)] + ["all"], "title": [f"T{i}" for i in range(TAGS + 1)]})


def double(df: pd.DataFrame) -> pd.DataFrame:
    return df[["id"]].assign(value=df["value"] * 2)


def explode_tags(df: pd.DataFrame) -> pd.DataFrame:
    mod = pd.DataFrame({"id": df["id"], "tag": "mod" + (df["value"] % TAGS).astype(str)})
    return pd.concat([mod, pd.DataFrame({"id": df["id"], "tag": "all"})], ignore_index=True)


def count_tags(item_tag: pd.DataFrame, label: pd.DataFrame) -> pd.DataFrame:
    counts = item_tag.groupby("tag").size().rename("n").reset_index()
    merged = label.merge(counts, on="tag", how="left").fillna({"n": 0})
    return merged[["tag", "title", "n"]].astype({"n": "int64"})


dbconn = DBConn(_db_url())
ds = DataStore(dbconn, create_meta_table=True)


def _table(name, *cols):
    return Table(TableStoreDB(dbconn, name, list(cols), create_table=True))


catalog = Catalog(
    {
        "item": _table(
            "item", Column("id", Integer, primary_key=True), Column("name", String), Column("value", Integer)
        ),
        "doubled": _table("doubled", Column("id", Integer, primary_key=True), Column("value", Integer)),
        "item_tag": _table(
            "item_tag", Column("id", Integer, primary_key=True), Column("tag", String, primary_key=True)
        ),
        "label": _table("label", Column("tag", String, primary_key=True), Column("title", String)),
        "tag_count": _table(
            "tag_count", Column("tag", String, primary_key=True), Column("title", String), Column("n", Integer)
        ),
    }
)
pipeline = Pipeline(
    [
        BatchGenerate(gen_labels, outputs=["label"]),
        BatchTransform(double, inputs=["item"], outputs=["doubled"], chunk_size=500),
        BatchTransform(explode_tags, inputs=["item"], outputs=["item_tag"], chunk_size=500),
        BatchTransform(
            count_tags, inputs=["item_tag", "label"], outputs=["tag_count"], transform_keys=["tag"], name="count_tags"
        ),
    ]
)
app = DatapipeApp(ds, catalog, pipeline)

"""A multi-step pipeline for the CLI tests, built by ``app()`` on each load.

items (generated, ``N_ITEMS`` rows) -> double -> doubled -> square -> squared
                                    -> split  -> evens, odds      (two outputs)

``DATAPIPE_DB`` is the database URL; the ``square`` step raises for the id in ``FAIL_ID``
(so its batch fails and is recorded). ``create_meta_table`` is off when ``NO_CREATE=1`` so
``db create-all`` has something to do.
"""

import os

import pandas as pd
from sqlalchemy import Column, Integer

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB


def load_items():
    n = int(os.environ.get("N_ITEMS", "10"))
    yield pd.DataFrame({"id": range(n), "value": range(n)})


def double(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(value=df["value"] * 2)


def square(df: pd.DataFrame) -> pd.DataFrame:
    fail = os.environ.get("FAIL_ID")
    if fail is not None and int(fail) in set(df["id"]):
        raise ValueError(f"cannot square id {fail}")
    return df.assign(value=df["value"] ** 2)


def split(df: pd.DataFrame):
    return df[df["value"] % 2 == 0], df[df["value"] % 2 == 1]


def schema():
    return [Column("id", Integer, primary_key=True), Column("value", Integer)]


def app() -> DatapipeApp:
    create = os.environ.get("NO_CREATE") != "1"
    dbconn = DBConn(os.environ["DATAPIPE_DB"])
    ds = DataStore(dbconn, create_meta_table=create)
    names = ["items", "doubled", "squared", "evens", "odds"]
    catalog = Catalog({n: Table(TableStoreDB(dbconn, n, schema(), create_table=create)) for n in names})
    pipeline = Pipeline(
        [
            BatchGenerate(load_items, outputs=["items"], name="load_items", labels=[("stage", "load")]),
            BatchTransform(double, inputs=["items"], outputs=["doubled"], chunk_size=3, name="double",
                           labels=[("stage", "compute")]),
            BatchTransform(square, inputs=["doubled"], outputs=["squared"], chunk_size=3, name="square",
                           labels=[("stage", "compute"), ("heavy", "yes")]),
            BatchTransform(split, inputs=["items"], outputs=["evens", "odds"], chunk_size=5, name="split"),
        ]
    )
    return DatapipeApp(ds, catalog, pipeline)

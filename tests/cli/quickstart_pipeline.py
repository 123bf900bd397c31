"""A quickstart-style pipeline for the CLI tests: generate rows, upper-case them.

The metadata and data live in ``DATAPIPE_DB`` (default ``sqlite:///quickstart.sqlite`` in the
working directory); ``N_ROWS`` sets how many rows the generator yields. The tests copy this file
to ``app.py`` in a temporary directory to exercise the default ``--pipeline app:app``.
"""

import os

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB


def generate_words():
    n = int(os.environ.get("N_ROWS", "10"))
    yield pd.DataFrame({"id": range(n), "text": [f"word{i}" for i in range(n)]})


def upper(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(text=df["text"].str.upper())


def schema():
    return [Column("id", Integer, primary_key=True), Column("text", String)]


dbconn = DBConn(os.environ.get("DATAPIPE_DB", "sqlite:///quickstart.sqlite"))
ds = DataStore(dbconn, create_meta_table=True)
catalog = Catalog(
    {
        "words": Table(TableStoreDB(dbconn, "words", schema(), create_table=True)),
        "upper_words": Table(TableStoreDB(dbconn, "upper_words", schema(), create_table=True)),
    }
)
pipeline = Pipeline(
    [
        BatchGenerate(generate_words, outputs=["words"], name="generate_words"),
        BatchTransform(upper, inputs=["words"], outputs=["upper_words"], chunk_size=4, name="upper"),
    ]
)
app = DatapipeApp(ds, catalog, pipeline)

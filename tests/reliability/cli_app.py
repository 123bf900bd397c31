"""A pipeline for the CLI security tests: ``datapipe --pipeline cli_app:app`` (URL from RELIABILITY_CLI_URL)."""

from __future__ import annotations

import os

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

LABEL = "x'; DROP TABLE inp; --"


def times_ten(df: pd.DataFrame) -> pd.DataFrame:
    if os.environ.get("RELIABILITY_CLI_FAIL"):
        raise RuntimeError("failing on purpose")
    return df.assign(v=df["v"] * 10)


def app() -> DatapipeApp:
    con = DBConn(os.environ["RELIABILITY_CLI_URL"])
    schema = [Column("name", String, primary_key=True), Column("v", Integer)]
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(con, "inp", schema, create_table=True)),
            "out": Table(TableStoreDB(con, "out", schema, create_table=True)),
        }
    )
    step = BatchTransform(times_ten, ["inp"], ["out"], name="times_ten", labels=[("kind", LABEL)])
    return DatapipeApp(DataStore(con, create_meta_table=True), catalog, Pipeline([step]))

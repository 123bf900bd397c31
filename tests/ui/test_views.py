"""``datapipe.ui.views`` without HTTP: cell values as JSON, typed filters on a datetime-keyed table."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, DateTime, Float

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.ui import views


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.int64(3), 3),
        (np.bool_(True), True),
        (float("nan"), None),
        (float("inf"), "inf"),
        (datetime.datetime(2024, 1, 2, 3, 4), "2024-01-02T03:04:00"),
        (pd.Timestamp("2024-01-02"), "2024-01-02T00:00:00"),
        (b"\x00\x01", {"bytes": 2}),
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        ("see postgresql://bob:pw123@db/x", "see postgresql://bob:***@db/x"),
    ],
)
def test_cells_as_json(value, expected):
    assert views.json_value(value) == expected
    json.dumps(views.json_value(value), allow_nan=False)


def test_long_text_is_cut():
    assert views.json_value("x" * 1000) == "x" * views.TEXT_LIMIT + "…"


def test_datetime_keys_filter_and_bad_values(tmp_path):
    dbconn = DBConn(f"sqlite:///{tmp_path}/db.sqlite")
    ds = DataStore(dbconn, create_meta_table=True)
    schema = [Column("at", DateTime, primary_key=True), Column("v", Float)]
    catalog = Catalog({"events": Table(TableStoreDB(dbconn, "events", schema, create_table=True))})
    app = DatapipeApp(ds, catalog, Pipeline([]))
    days = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"])
    ds.get_or_create_table("events", catalog.catalog["events"].store).store_chunk(
        pd.DataFrame({"at": days, "v": [1.0, 2.0, float("inf")]})
    )
    page = views.table_page(app, "events", filters=["at=2024-01-02T00:00:00"])
    assert [r["at"] for r in page["rows"]] == ["2024-01-02T00:00:00"]
    assert views.table_page(app, "events", filters=["v=3"])["rows"] == []
    assert views.table_page(app, "events")["rows"][2]["v"] == "inf"
    with pytest.raises(views.UiError, match="'at' holds datetime values"):
        views.table_page(app, "events", filters=["at=yesterday"])

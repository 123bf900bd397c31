"""Child processes for the concurrent-runner tests (run through the forkserver of ``killer``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

KEYS = 300


def schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


def build(meta_url: str, func: Any):
    con = DBConn(meta_url)
    ds = DataStore(con, create_meta_table=True)
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(con, "inp", schema(), create_table=True)),
            "out": Table(TableStoreDB(con, "out", schema(), create_table=True)),
        }
    )
    pipe = Pipeline([BatchTransform(func, ["inp"], ["out"], name="slow_step", chunk_size=100)])
    return ds, build_compute(ds, catalog, pipe)


def fill(meta_url: str) -> None:
    ds, _ = build(meta_url, lambda df: df)
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(KEYS), "a": [f"x{i}" for i in range(KEYS)]}))


class _SendWaiting(logging.Handler):
    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        self.conn.send(("waiting", record.getMessage()))


def runner(conn: Any, meta_url: str, mode: str, gate: Optional[Any]) -> None:
    """Run the one-step pipeline; report processed rows; with ``gate``, block inside the first batch."""
    os.environ["DATAPIPE_STEP_LOCK"] = mode
    logging.getLogger("datapipe.meta.locks").addHandler(_SendWaiting(conn))
    state = {"first": True}

    def func(df: pd.DataFrame) -> pd.DataFrame:
        if gate is not None and state["first"]:
            state["first"] = False
            conn.send(("inside", ""))
            gate.wait()
        conn.send(("rows", len(df)))
        return df.assign(a=df["a"] + "!")

    ds, steps = build(meta_url, func)
    try:
        run_steps(ds, steps)
    except Exception as e:  # reported to the parent, which asserts on the message
        conn.send(("error", f"{type(e).__name__}: {e}"))
        conn.close()
        sys.exit(3)
    conn.send(("done", ""))
    conn.close()

"""A two-step pipeline run in a subprocess by test_crash.py.

usage: python crash_pipeline.py DB_URL [KILL_AT_BATCH]
With KILL_AT_BATCH the process SIGKILLs itself while processing that batch of the second step
(the first step's batches are already committed).
"""

import os
import signal
import sys

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

N = 2000


def schema(*keys):
    return [Column(k, Integer, primary_key=True) for k in keys] + [Column("a", String)]


def build(url):
    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            name: Table(TableStoreDB(dbconn, name, schema(*keys), create_table=True))
            for name, keys in [("src", ["id"]), ("mid", ["id"]), ("fan", ["id", "k"])]
        }
    )
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    batches = {"n": 0}

    def generate():
        for start in range(0, N, 500):
            ids = range(start, min(N, start + 500))
            yield pd.DataFrame({"id": list(ids), "a": [f"s{i}" for i in ids]})

    def upper(df):
        return df.assign(a=df["a"].str.upper())

    def fan_out(df):
        batches["n"] += 1
        if batches["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        parts = [df.assign(k=k, a=df["a"] + f"-{k}") for k in range(2)]
        return pd.concat(parts)[["id", "k", "a"]]

    pipeline = Pipeline(
        [
            BatchGenerate(generate, outputs=["src"]),
            BatchTransform(upper, ["src"], ["mid"], chunk_size=300),
            BatchTransform(fan_out, ["mid"], ["fan"], chunk_size=300),
        ]
    )
    return ds, build_compute(ds, catalog, pipeline)


if __name__ == "__main__":
    ds, steps = build(sys.argv[1])
    run_steps(ds, steps)

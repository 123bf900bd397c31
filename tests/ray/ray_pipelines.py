"""Step functions and pipeline builders for the Ray tests (importable by Ray workers via PYTHONPATH)."""

import threading
from typing import Callable, Dict, List

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, ComputeStep, Pipeline, Table, build_compute
from datapipe.datatable import DataStore
from datapipe.executor import ExecutorConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB


def schema() -> List[Column]:
    return [Column("id", Integer, primary_key=True), Column("a", String)]


def exclaim(df: pd.DataFrame) -> pd.DataFrame:
    """1-to-1; raises for a row whose value is 'bad' (that batch fails)."""
    if (df["a"] == "bad").any():
        raise ValueError("bad value in batch")
    return df.assign(a=df["a"] + "!")


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock), raised for a row whose value is 'locked'."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def exclaim_or_lock(df: pd.DataFrame) -> pd.DataFrame:
    """Like ``exclaim``, but a batch with a 'locked' value raises ``UnpicklableError``."""
    if (df["a"] == "locked").any():
        raise UnpicklableError("locked value in batch")
    return exclaim(df)


def evens_and_odds(df: pd.DataFrame):
    """Two outputs; rows move between them when values change (deletes from the other)."""
    n = df["a"].str.len()
    return df[n % 2 == 0], df[n % 2 == 1]


def build(ds: DataStore, dbconn: DBConn, prefix: str, parallelism: int = 3,
          first: Callable[[pd.DataFrame], pd.DataFrame] = exclaim) -> Dict[str, object]:
    """Tables ``<prefix>_inp/_out/_even/_odd`` and two steps (``first``, then the split), chunk_size 4."""
    names = ["inp", "out", "even", "odd"]
    catalog = Catalog({f"{prefix}_{n}": Table(TableStoreDB(dbconn, f"{prefix}_{n}", schema(), create_table=True))
                       for n in names})
    config = ExecutorConfig(cpu=0.5, parallelism=parallelism)
    pipeline = Pipeline(
        [
            BatchTransform(first, inputs=[f"{prefix}_inp"], outputs=[f"{prefix}_out"], chunk_size=4,
                           name=f"{prefix}_exclaim", executor_config=config),
            BatchTransform(evens_and_odds, inputs=[f"{prefix}_out"], outputs=[f"{prefix}_even", f"{prefix}_odd"],
                           chunk_size=4, name=f"{prefix}_split", executor_config=config),
        ]
    )
    steps: List[ComputeStep] = build_compute(ds, catalog, pipeline)
    return {"steps": steps, "tables": {n: f"{prefix}_{n}" for n in names}}


def app():
    """A ``DatapipeApp`` for ``datapipe --pipeline ray_pipelines:app --executor ray`` (``DATAPIPE_DB``, ``N_ROWS``)."""
    import os

    from datapipe.compute import DatapipeApp
    from datapipe.step.batch_generate import BatchGenerate

    def load():
        n = int(os.environ.get("N_ROWS", "20"))
        yield pd.DataFrame({"id": range(n), "a": [f"w{i}" for i in range(n)]})

    dbconn = DBConn(os.environ["DATAPIPE_DB"])
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog({n: Table(TableStoreDB(dbconn, n, schema(), create_table=True)) for n in ("inp", "out")})
    config = ExecutorConfig(cpu=0.5, parallelism=4)
    pipeline = Pipeline(
        [
            BatchGenerate(load, outputs=["inp"], name="load"),
            BatchTransform(exclaim, inputs=["inp"], outputs=["out"], chunk_size=3, name="exclaim",
                           executor_config=config),
        ]
    )
    return DatapipeApp(ds, catalog, pipeline)

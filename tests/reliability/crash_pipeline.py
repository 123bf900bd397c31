"""The pipeline the crash tests kill, and the child-process entry point that runs it.

Graph (every SQL table lives in the metadata database, so data and metadata share transactions;
``out_redis`` is a Redis store, written outside that transaction, when a Redis URL is given)::

    generate (BatchGenerate)  -> src(id) -one_to_one-> one(id) -one_to_many-> many(id, n)
    ext(id), written by the harness directly; UpdateExternalTable("ext") records its changes
    join_ext(many, ext)       -> joined(id, n)
    publish(joined)           -> out_sql(id, n) and out_redis(id, n)

The content is a pure function of ``(version, records)``, so the final state after any sequence
of interrupted runs must equal one uninterrupted run of the last version.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import Column, Float, Integer, String

from datapipe.compute import Catalog, ComputeStep, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import DBConn, TableStoreDB

GEN_CHUNK = 2000
STEP_CHUNK = 1000
WRITTEN_TABLES = ["src", "one", "many", "joined", "out_sql", "out_redis"]
STEPS = ["generate", "update_ext", "one_to_one", "one_to_many", "join_ext", "publish"]


# ---------------------------------------------------------------- content as a function of the version


def _bumps(ids: np.ndarray, version: int, period: int) -> np.ndarray:
    """How many times id's residue class has come up in versions 0..version (changes every ``period``)."""
    r = ids % period
    return np.where(version >= r, (version - r) // period + 1, 0)


def source_frame(version: int, records: int) -> pd.DataFrame:
    """``src`` at ``version``: ~25 % of values change per version, ~1 % of ids vanish, a few appear."""
    ids = np.arange(records + records // 50)
    present = (ids < records) & ((ids * 7 + version) % 97 != 0)
    present |= (ids >= records) & ((ids + version) % 3 == 0)
    ids = ids[present]
    value = [f"v{i}-{b}" for i, b in zip(ids.tolist(), _bumps(ids, version, 4).tolist())]
    return pd.DataFrame({"id": ids, "value": value})


def ext_frame(version: int, records: int) -> pd.DataFrame:
    """``ext`` at ``version`` (written by "someone else"): ~10 % of weights change, 2 % of ids absent."""
    ids = np.arange(records)
    ids = ids[(ids + version) % 50 != 0]
    weight = (ids * 31) % 1000 + _bumps(ids, version, 10)
    return pd.DataFrame({"id": ids, "weight": weight.astype("int64")})


# ---------------------------------------------------------------- step functions


def generate(version: int, records: int) -> Iterator[pd.DataFrame]:
    df = source_frame(version, records)
    for start in range(0, len(df), GEN_CHUNK):
        yield df.iloc[start : start + GEN_CHUNK]


def one_to_one(src: pd.DataFrame) -> pd.DataFrame:
    up = src["value"].str.upper() + "!"
    return pd.DataFrame({"id": src["id"], "value_up": up, "length": up.str.len().astype("int64")})


def one_to_many(one: pd.DataFrame) -> pd.DataFrame:
    reps = ((one["length"] + one["id"]) % 3 + 1).to_numpy()
    out = one.loc[one.index.repeat(reps), ["id", "value_up"]].reset_index(drop=True)
    out["n"] = out.groupby("id").cumcount().astype("int64")
    out["item"] = out["value_up"] + "#" + out["n"].astype(str)
    return out[["id", "n", "item"]]


def join_ext(many: pd.DataFrame, ext: pd.DataFrame) -> pd.DataFrame:
    out = many.merge(ext[["id", "weight"]], on="id", how="left")
    out["weight"] = out["weight"].fillna(-1).astype("int64")
    return out[["id", "n", "item", "weight"]]


def publish(joined: pd.DataFrame, with_redis: bool) -> Any:
    sql = pd.DataFrame(
        {"id": joined["id"], "n": joined["n"], "item": joined["item"], "score": joined["weight"] / 7.0}
    )
    if not with_redis:
        return sql
    red = pd.DataFrame(
        {"id": joined["id"], "n": joined["n"], "payload": joined["item"] + "@" + joined["weight"].astype(str)}
    )
    return sql, red


# ---------------------------------------------------------------- the pipeline


def _sql(con: DBConn, name: str, columns: List[Column]) -> Table:
    return Table(TableStoreDB(con, name, columns, create_table=True))


def _id() -> Column:
    return Column("id", Integer, primary_key=True)


def _n() -> Column:
    return Column("n", Integer, primary_key=True)


REDIS_SCHEMA = [
    Column("id", Integer, primary_key=True),
    Column("n", Integer, primary_key=True),
    Column("payload", String),
]


@dataclass
class Built:
    ds: DataStore
    catalog: Catalog
    steps: List[ComputeStep]


def build(meta_url: str, version: int, records: int, redis_url: Optional[str] = None) -> Built:
    con = DBConn(meta_url)
    ds = DataStore(con, create_meta_table=True)
    tables: Dict[str, Table] = {
        "src": _sql(con, "src", [_id(), Column("value", String)]),
        "ext": _sql(con, "ext", [_id(), Column("weight", Integer)]),
        "one": _sql(con, "one", [_id(), Column("value_up", String), Column("length", Integer)]),
        "many": _sql(con, "many", [_id(), _n(), Column("item", String)]),
        "joined": _sql(con, "joined", [_id(), _n(), Column("item", String), Column("weight", Integer)]),
        "out_sql": _sql(con, "out_sql", [_id(), _n(), Column("item", String), Column("score", Float)]),
    }
    outputs = ["out_sql"]
    if redis_url:
        from datapipe_redis import RedisStore

        tables["out_redis"] = Table(RedisStore(redis_url, "out_redis", REDIS_SCHEMA))
        outputs.append("out_redis")
    catalog = Catalog(tables)
    pipeline = Pipeline(
        [
            BatchGenerate(generate, outputs=["src"], name="generate", kwargs={"version": version, "records": records}),
            UpdateExternalTable("ext"),
            BatchTransform(one_to_one, ["src"], ["one"], name="one_to_one", chunk_size=STEP_CHUNK),
            BatchTransform(one_to_many, ["one"], ["many"], name="one_to_many", chunk_size=STEP_CHUNK),
            BatchTransform(join_ext, ["many", "ext"], ["joined"], name="join_ext", chunk_size=STEP_CHUNK),
            BatchTransform(
                publish,
                ["joined"],
                outputs,
                name="publish",
                chunk_size=STEP_CHUNK,
                kwargs={"with_redis": bool(redis_url)},
            ),
        ]
    )
    return Built(ds, catalog, build_compute(ds, catalog, pipeline))


def step_phase(step: ComputeStep) -> str:
    return "update_ext" if step.name.startswith("update_") else step.name


def write_ext(meta_url: str, version: int, records: int) -> None:
    """The "external writer": replace the content of ``ext`` in one transaction."""
    con = DBConn(meta_url)
    store = TableStoreDB(con, "ext", [_id(), Column("weight", Integer)], create_table=True)
    with con.transaction() as tx:
        tx.execute(store.data_table.delete())
        store.insert_rows(ext_frame(version, records))  # type: ignore[arg-type]
    con.con.dispose()


# ---------------------------------------------------------------- child process


class PhaseReporter(RunCallback):
    """Sends ``start <phase>`` / ``batch <phase>`` / ``done`` to the parent over a pipe."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def on_step_start(self, step: ComputeStep, total: int = 0) -> None:
        self.conn.send(("start", step_phase(step)))

    def on_step_progress(self, step: ComputeStep, completed: int, total: int, **stats: Any) -> None:
        self.conn.send(("batch", step_phase(step)))


def _install_fault(conn: Any, table: str, kill_at: int) -> None:
    """Kill this process at the ``kill_at``-th store write of ``table``, before its metadata is written."""
    import datapipe.datatable as datatable

    calls = {"n": 0}

    def hook(point: str, dt: Any) -> None:
        if dt.name != table:
            return
        calls["n"] += 1
        if calls["n"] == kill_at:
            conn.send(("fault", f"{point}:{dt.name}"))
            os.kill(os.getpid(), signal.SIGKILL)

    datatable.fault_hook = hook


def child_main(
    conn: Any, meta_url: str, version: int, records: int, redis_url: Optional[str], fault: Optional[Tuple[str, int]]
) -> None:
    """Run the whole pipeline once, reporting phases on ``conn``; ``fault=(table, k)`` kills at that data write."""
    if fault:
        _install_fault(conn, *fault)
    built = build(meta_url, version, records, redis_url)
    conn.send(("ready", ""))
    run_steps(built.ds, built.steps, RunConfig(callback=PhaseReporter(conn)))
    conn.send(("done", ""))
    conn.close()
    sys.exit(0)

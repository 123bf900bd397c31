"""Join workloads: a one-to-many join (items x their annotations), its bare-driver floor, and result checks.

``dp_one_to_many(url, n, chunk_size)`` builds ``items(item_id)`` with ``n`` rows and
``annotations(item_id, ann_id)`` with ``ANNS_PER_ITEM`` rows per item, and times a ``BatchTransform``
over transform key ``item_id`` that writes one ``item_stats`` row per item (annotation count, score sum
plus the item's weight):

* ``o2m_first_run``: the first run;
* ``o2m_rerun_1pct_items``: rerun after 1 % of the items changed (1 % of the output keys; each reads
  its item and its ``ANNS_PER_ITEM`` annotations);
* ``o2m_rerun_1pct_anns``: rerun after 1 % of the annotations changed, one annotation on each of 10 %
  of the items (so 10 % of the output keys are recomputed: the change spreads out through the join).

Reruns are the median of ``RERUN_REPEATS`` (each on different rows). After every run the output table is
checked against the expected result computed here with pandas from the generated inputs (row count and
a SHA-256 digest of the sorted rows), so a fast wrong answer fails the benchmark. ``check_cross`` does the
same for the cross-join workload of ``workloads.py``.

``raw_one_to_many_floor(url, n)`` is the same work with the bare driver (``workloads.Raw``): read the input
rows each phase needs, write the output rows and two metadata rows per output key (``executemany`` on
SQLite, ``COPY`` on PostgreSQL); a rerun's floor overwrites the rows the first run wrote (``Raw.upsert``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import Column, Integer
from workloads import CHANGE_FRACTION, RERUN_REPEATS, Raw, _median, timed

ANNS_PER_ITEM = 10
O2M_PHASES = ["o2m_first_run", "o2m_rerun_1pct_items", "o2m_rerun_1pct_anns"]


# ------------------------------------------------------------------------------------- data


def items_frame(n: int) -> pd.DataFrame:
    ids = np.arange(n, dtype=np.int64)
    return pd.DataFrame({"item_id": ids, "weight": ids % 13})


def annotations_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "item_id": np.repeat(np.arange(n, dtype=np.int64), ANNS_PER_ITEM),
            "ann_id": np.tile(np.arange(ANNS_PER_ITEM, dtype=np.int64), n),
            "score": rng.integers(0, 100, n * ANNS_PER_ITEM),
        }
    )


def item_stats(items: pd.DataFrame, anns: pd.DataFrame) -> pd.DataFrame:
    """The step's function: per item, how many annotations and their score sum plus the item's weight
    (vectorised, so that the benchmark measures Datapipe rather than pandas merges)."""
    grp = anns.groupby("item_id", sort=False)["score"]
    count, total = grp.size(), grp.sum()
    weight = items.set_index("item_id")["weight"]
    keys = weight.index.union(count.index)
    return pd.DataFrame(
        {
            "item_id": keys.to_numpy(),
            "n_ann": count.reindex(keys, fill_value=0).to_numpy(),
            "total": (total.reindex(keys, fill_value=0) + weight.reindex(keys, fill_value=0)).to_numpy(),
        }
    )


def expected_stats(items: pd.DataFrame, anns: pd.DataFrame) -> pd.DataFrame:
    """``item_stats`` over the whole inputs, computed independently (numpy bincount, not the step's code)."""
    n = int(items["item_id"].max()) + 1
    ids = anns["item_id"].to_numpy()
    counts = np.bincount(ids, minlength=n)
    sums = np.bincount(ids, weights=anns["score"].to_numpy(), minlength=n).astype(np.int64)
    weight = np.zeros(n, dtype=np.int64)
    weight[items["item_id"].to_numpy()] = items["weight"].to_numpy()
    return pd.DataFrame({"item_id": np.arange(n), "n_ann": counts, "total": sums + weight})


def digest(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """SHA-256 of the rows of ``df`` (``columns``, as int64), sorted by all columns."""
    arr = df[list(columns)].astype("int64").sort_values(list(columns)).to_numpy()
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def read_table(url: str, table: str, columns: Sequence[str]) -> pd.DataFrame:
    """Every row of ``table``, read with the bare driver (not through Datapipe)."""
    if url.startswith("sqlite"):
        con: Any = sqlite3.connect(url.split("///", 1)[1])
    else:
        import psycopg

        con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        cur = con.cursor()
        cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
        rows = cur.fetchall()
    finally:
        con.close()
    return pd.DataFrame(rows, columns=list(columns))


def check_output(url: str, table: str, expected: pd.DataFrame, what: str) -> None:
    """Raise ``AssertionError`` unless ``table`` holds exactly the rows of ``expected``."""
    cols = list(expected.columns)
    got = read_table(url, table, cols)
    if len(got) != len(expected):
        raise AssertionError(f"{what}: {table} has {len(got)} rows, expected {len(expected)}")
    if digest(got, cols) != digest(expected, cols):
        raise AssertionError(f"{what}: {table} content differs from the expected result (digest mismatch)")


def check_cross(url: str, side: int, image_v: np.ndarray, what: str) -> None:
    """The cross workload's ``x_scores`` is ``w(model) * v(image)`` for every pair (``w = id % 7``)."""
    ids = np.arange(side, dtype=np.int64)
    expected = pd.DataFrame(
        {
            "model_id": np.repeat(ids, side),
            "image_id": np.tile(ids, side),
            "score": np.repeat(ids % 7, side) * np.tile(image_v.astype(np.int64), side),
        }
    )
    check_output(url, "x_scores", expected, what)


# ------------------------------------------------------------------------------------- Datapipe


def _pipeline(url: str, chunk_size: int) -> Tuple[Any, List[Any]]:
    from datapipe.compute import Catalog, Pipeline, Table, build_compute
    from datapipe.datatable import DataStore
    from datapipe.step.batch_transform import BatchTransform
    from datapipe.store.database import DBConn, TableStoreDB

    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)

    def table(name: str, *cols: Column) -> Any:
        return Table(store=TableStoreDB(dbconn, name, list(cols), create_table=True))

    catalog = Catalog(
        {
            "items": table("j_items", Column("item_id", Integer, primary_key=True), Column("weight", Integer)),
            "annotations": table("j_annotations", Column("item_id", Integer, primary_key=True),
                                 Column("ann_id", Integer, primary_key=True), Column("score", Integer)),
            "item_stats": table("j_item_stats", Column("item_id", Integer, primary_key=True),
                                Column("n_ann", Integer), Column("total", Integer)),
        }
    )
    step = BatchTransform(item_stats, inputs=["items", "annotations"], outputs=["item_stats"],
                          chunk_size=chunk_size, name="o2m_stats")
    return ds, build_compute(ds, catalog, Pipeline([step]))


def dp_one_to_many(url: str, n: int, chunk_size: int, load_chunk: int = 100_000) -> Dict[str, Any]:
    from datapipe.compute import run_steps

    ds, steps = _pipeline(url, chunk_size)
    items, anns = items_frame(n), annotations_frame(n)
    items_t, anns_t = ds.get_table("items"), ds.get_table("annotations")
    for i in range(0, n, load_chunk):
        items_t.store_chunk(items.iloc[i : i + load_chunk])
    for i in range(0, len(anns), load_chunk):
        anns_t.store_chunk(anns.iloc[i : i + load_chunk])

    def run_and_check(what: str) -> float:
        elapsed = timed(lambda: run_steps(ds, steps))
        check_output(url, "j_item_stats", expected_stats(items, anns), what)
        return elapsed

    first = run_and_check("one-to-many first run")
    k = max(1, int(n * CHANGE_FRACTION))
    t_items: List[float] = []
    for r in range(RERUN_REPEATS):  # 1 % of the items: contiguous ids, each its own output key
        sel = np.arange(r * k, (r + 1) * k)
        items.loc[sel, "weight"] += 100
        items_t.store_chunk(items.iloc[sel])
        t_items.append(run_and_check(f"one-to-many rerun after 1% of items changed (#{r})"))
    t_anns: List[float] = []
    stride = max(1, n // (k * ANNS_PER_ITEM))
    ka = max(1, int(len(anns) * CHANGE_FRACTION))
    for r in range(RERUN_REPEATS):  # 1 % of the annotations: one on each of 10 % of the items
        rows = (np.arange(ka) * stride % n) * ANNS_PER_ITEM + (r % ANNS_PER_ITEM)
        anns.loc[rows, "score"] += 1
        anns_t.store_chunk(anns.iloc[rows])
        t_anns.append(run_and_check(f"one-to-many rerun after 1% of annotations changed (#{r})"))
    return {
        "o2m_first_run": first,
        "o2m_rerun_1pct_items": _median(t_items),
        "o2m_rerun_1pct_anns": _median(t_anns),
        "samples_o2m_rerun_1pct_items": t_items,
        "samples_o2m_rerun_1pct_anns": t_anns,
    }


# ------------------------------------------------------------------------------------- bare driver


def _o2m_tables(raw: Raw) -> Tuple[str, str, str]:
    items, anns, meta = "raw_j_items", "raw_j_annotations", "raw_j_meta"
    for t in (items, anns, meta):
        raw.cur.execute(f"DROP TABLE IF EXISTS {t}")
    raw.cur.execute(f"CREATE TABLE {items} (item_id INTEGER PRIMARY KEY, weight INTEGER)")
    raw.cur.execute(f"CREATE TABLE {anns} (item_id INTEGER, ann_id INTEGER, score INTEGER, "
                    "PRIMARY KEY (item_id, ann_id))")
    raw.con.commit()
    return items, anns, meta


def _tuples(df: pd.DataFrame) -> List[Tuple[Any, ...]]:
    return list(zip(*[df[c].tolist() for c in df.columns]))


class _Outputs:
    """The output table and the two metadata tables of the one-to-many step, for the floor: ``first``
    writes new rows, ``again`` overwrites rows that exist (``Raw.upsert``), as a rerun must."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.out, self.out_meta = raw.fresh_tables(("item_id",), ("n_ann", "total"))
        self.step_meta = raw.fresh_tables(("item_id",), ())[1]

    def first(self, rows: List[Tuple[Any, ...]]) -> float:
        meta = [(r[0], 0, 1.0, 1.0, 1.0, None) for r in rows]
        raw = self.raw
        return raw.write(self.out, rows) + raw.write(self.out_meta, meta) + raw.write(self.step_meta, meta)

    def again(self, rows: List[Tuple[Any, ...]]) -> float:
        meta = [(r[0], 1, 2.0, 2.0, 2.0, None) for r in rows]
        return (self.raw.upsert(self.out, rows) + self.raw.upsert(self.out_meta, meta)
                + self.raw.upsert(self.step_meta, meta))


def _read(raw: Raw, sql: str, *params: Any) -> Tuple[float, List[Any]]:
    t = time.perf_counter()
    raw.cur.execute(sql, params)
    rows = raw.cur.fetchall()
    return time.perf_counter() - t, rows


def _read_by_items(raw: Raw, table: str, columns: str, ids: List[int]) -> Tuple[float, List[Any]]:
    if raw.pg:
        return _read(raw, f"SELECT {columns} FROM {table} WHERE item_id = ANY(%s)", ids)
    return _read(raw, f"SELECT {columns} FROM {table} WHERE item_id IN (SELECT value FROM json_each(?))", str(ids))


def raw_one_to_many_floor(url: str, n: int) -> Dict[str, float]:
    """Bare-driver time for each one-to-many phase: read its input rows, write its outputs + 2 metadata rows each."""
    raw = Raw(url)
    items_t, anns_t, _ = _o2m_tables(raw)
    items, anns = items_frame(n), annotations_frame(n)
    raw.write(items_t, _tuples(items))
    raw.write(anns_t, _tuples(anns))
    res: Dict[str, float] = {}

    def phase(ids: List[int]) -> float:
        t1, irows = _read_by_items(raw, items_t, "item_id, weight", ids)
        t2, arows = _read_by_items(raw, anns_t, "item_id, ann_id, score", ids)
        out = expected_stats(pd.DataFrame(irows, columns=["item_id", "weight"]),
                             pd.DataFrame(arows, columns=["item_id", "ann_id", "score"]))
        out = out[out["item_id"].isin(ids)]
        return t1 + t2 + outputs.again(_tuples(out))

    t1, irows = _read(raw, f"SELECT item_id, weight FROM {items_t}")
    t2, arows = _read(raw, f"SELECT item_id, ann_id, score FROM {anns_t}")
    out = expected_stats(pd.DataFrame(irows, columns=["item_id", "weight"]),
                         pd.DataFrame(arows, columns=["item_id", "ann_id", "score"]))
    outputs = _Outputs(raw)
    res["o2m_first_run"] = t1 + t2 + outputs.first(_tuples(out))
    k = max(1, int(n * CHANGE_FRACTION))
    stride = max(1, n // (k * ANNS_PER_ITEM))
    ka = max(1, int(len(anns) * CHANGE_FRACTION))
    res["o2m_rerun_1pct_items"] = _median([phase(list(range(r * k, (r + 1) * k))) for r in range(RERUN_REPEATS)])
    spread = sorted({int(i) for i in np.arange(ka) * stride % n})
    res["o2m_rerun_1pct_anns"] = _median([phase(spread) for _ in range(RERUN_REPEATS)])
    raw.con.close()
    return res


WORKERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "dp_one_to_many": dp_one_to_many,
    "raw_one_to_many_floor": raw_one_to_many_floor,
}

"""The measured work: Datapipe phases and the same work done with the bare database driver.

Each function here runs inside a fresh worker process (see ``run.py``) so that peak RSS is per
phase group and no state leaks between measurements. Every function returns a dict of floats.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import Column, Integer, String

CHANGE_FRACTION = 0.01
NOOP_REPEATS = 5
RERUN_REPEATS = 3  # 1 % reruns: median of this many (each on a different 1 %)


def in_worker(modules: Sequence[str], name: str, *args: Any) -> Dict[str, Any]:
    """Run ``name(*args)`` from the ``WORKERS`` of ``modules`` (modules of this directory) in a fresh
    interpreter, so that peak RSS and caches are its own; return its result dict."""
    code = (
        "import importlib, json, sys; sys.path.insert(0, sys.argv[1]); "
        "w = {k: f for m in sys.argv[2].split(',') for k, f in importlib.import_module(m).WORKERS.items()}; "
        "print('RESULT ' + json.dumps(w[sys.argv[3]](*json.loads(sys.argv[4]))))"
    )
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run(
        [sys.executable, "-c", code, here, ",".join(modules), name, json.dumps(list(args))],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {name}{args} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def input_frame(n: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    ids = np.arange(start, start + n)
    return pd.DataFrame({"id": ids, "x": rng.integers(0, 1000, n), "s": [f"row-{i}" for i in ids]})


def digest(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """Content digest of a table: SHA-256 of its rows sorted by ``keys``, columns in name order, values as text.

    Independent of row order, column order and integer dtype, so a frame computed from the input with
    pandas and the table Datapipe wrote have the same digest exactly when they hold the same rows.
    """
    cols = sorted(df.columns)
    ordered = df.sort_values(list(keys), kind="mergesort")[cols].astype(str)
    h = hashlib.sha256("\x1f".join(cols).encode())
    for column in ordered.columns:
        h.update(b"\x1e" + "\x1f".join(ordered[column].tolist()).encode())
    return h.hexdigest()


def check_output(phase: str, got: pd.DataFrame, expected: pd.DataFrame, keys: Sequence[str]) -> str:
    """Raise unless ``got`` has the rows of ``expected`` (count and content digest); return the digest."""
    if len(got) != len(expected):
        raise AssertionError(f"{phase}: output has {len(got)} rows, expected {len(expected)}")
    have, want = digest(got[list(expected.columns)], keys), digest(expected, keys)
    if have != want:
        raise AssertionError(f"{phase}: output content digest {have[:12]} differs from the expected {want[:12]}")
    return have


def expected_one_input(n: int, changed_rounds: int = 0, deleted_rounds: int = 0) -> pd.DataFrame:
    """What ``bench_out`` must hold after the first run, ``changed_rounds`` 1 % changes and ``deleted_rounds``
    1 % deletions of ``dp_reruns``, computed from the input alone (x * 2 of the current input)."""
    inp = input_frame(n)
    k = max(1, int(n * CHANGE_FRACTION))
    for r in range(changed_rounds):
        changed = input_frame(k, r * k)
        changed["x"] = changed["x"] + 1
        inp = pd.concat([inp[~inp["id"].isin(changed["id"])], changed], ignore_index=True)
    if deleted_rounds:
        inp = inp[inp["id"] < n - deleted_rounds * k]
    return inp.assign(x=inp["x"] * 2)


def expected_cross(side: int, changed: int = 0) -> pd.DataFrame:
    """``x_scores`` of ``dp_cross``: every (model, image) pair with w * v, the first ``changed`` images' v + 1."""
    ids = np.arange(side)
    w = ids % 7
    v = ids % 11 + (ids < changed)
    return pd.DataFrame({"model_id": np.repeat(ids, side), "image_id": np.tile(ids, side),
                         "score": np.repeat(w, side) * np.tile(v, side)})


# ------------------------------------------------------------------------------------- Datapipe


def _one_input_pipeline(url: str, chunk_size: int) -> Tuple[Any, List[Any]]:
    from datapipe.compute import Catalog, Pipeline, Table, build_compute
    from datapipe.datatable import DataStore
    from datapipe.step.batch_transform import BatchTransform
    from datapipe.store.database import DBConn, TableStoreDB

    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)

    def schema() -> List[Column]:
        return [Column("id", Integer, primary_key=True), Column("x", Integer), Column("s", String)]

    catalog = Catalog(
        {
            "inp": Table(store=TableStoreDB(dbconn, "bench_inp", schema(), create_table=True)),
            "out": Table(store=TableStoreDB(dbconn, "bench_out", schema(), create_table=True)),
        }
    )

    def double(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(x=df["x"] * 2)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(double, inputs=["inp"], outputs=["out"],
                                                                chunk_size=chunk_size, name="double")]))
    return ds, steps


def dp_load(url: str, n: int, chunk_size: int, load_chunk: int = 10_000) -> Dict[str, float]:
    ds, _ = _one_input_pipeline(url, chunk_size)
    inp = ds.get_table("inp")
    df = input_frame(n)
    step = load_chunk

    def load() -> None:
        for i in range(0, n, step):
            inp.store_chunk(df.iloc[i : i + step])

    return {"load": timed(load)}


def dp_first_run(url: str, n: int, chunk_size: int) -> Dict[str, float]:
    from datapipe.compute import run_steps

    ds, steps = _one_input_pipeline(url, chunk_size)
    rss_before = peak_rss_mib()
    elapsed = timed(lambda: run_steps(ds, steps))
    size = ds.get_table("out").get_size()
    if size != n:
        raise AssertionError(f"first run wrote {size} rows, expected {n}")
    rss = peak_rss_mib()  # before the check reads the whole output
    check = check_output("first_run", ds.get_table("out").get_data(), expected_one_input(n), ["id"])
    return {"first_run": elapsed, "peak_rss_mib": rss, "rss_before_run_mib": rss_before,
            "digest_first_run": check}  # type: ignore[dict-item]


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def dp_reruns(url: str, n: int, chunk_size: int) -> Dict[str, float]:
    """No-op rerun (median of NOOP_REPEATS), then RERUN_REPEATS x (change 1 %, rerun) and (delete 1 %, rerun).

    The first no-op after the first run is timed apart (``noop_rerun_first``), not in the median: it also
    pays one-off costs (a new process's statement caches; in this Datapipe the change query for the new
    watermark shape and stale planner statistics; 0.15's own), which are no steady-state no-op's.
    """
    from datapipe.compute import run_steps

    ds, steps = _one_input_pipeline(url, chunk_size)
    inp, out = ds.get_table("inp"), ds.get_table("out")
    first_noop = timed(lambda: run_steps(ds, steps))
    noop = [timed(lambda: run_steps(ds, steps)) for _ in range(NOOP_REPEATS)]
    k = max(1, int(n * CHANGE_FRACTION))
    t_changed, t_deleted = [], []
    for r in range(RERUN_REPEATS):
        changed = input_frame(k, r * k)
        changed["x"] = changed["x"] + 1
        inp.store_chunk(changed)
        t_changed.append(timed(lambda: run_steps(ds, steps)))
        got = out.get_data(changed[["id"]])
        if not (got.set_index("id").loc[changed["id"], "x"].to_numpy() == changed["x"].to_numpy() * 2).all():
            raise AssertionError("1% change was not propagated")
    digest_changed = check_output("rerun_1pct_changed", out.get_data(),
                                  expected_one_input(n, RERUN_REPEATS), ["id"])
    for r in range(RERUN_REPEATS):
        inp.delete_by_idx(pd.DataFrame({"id": np.arange(n - (r + 1) * k, n - r * k)}))
        t_deleted.append(timed(lambda: run_steps(ds, steps)))
        if out.get_size() != n - (r + 1) * k:
            raise AssertionError(f"1% delete was not propagated: {out.get_size()} rows, expected {n - (r + 1) * k}")
    digest_deleted = check_output("rerun_1pct_deleted", out.get_data(),
                                  expected_one_input(n, RERUN_REPEATS, RERUN_REPEATS), ["id"])
    return {
        "digest_rerun_1pct_changed": digest_changed,  # type: ignore[dict-item]
        "digest_rerun_1pct_deleted": digest_deleted,  # type: ignore[dict-item]
        "noop_rerun": _median(noop),
        "rerun_1pct_changed": _median(t_changed),
        "rerun_1pct_deleted": _median(t_deleted),
        "noop_rerun_first": first_noop,
        "samples_noop_rerun": noop,  # type: ignore[dict-item]
        "samples_rerun_1pct_changed": t_changed,  # type: ignore[dict-item]
        "samples_rerun_1pct_deleted": t_deleted,  # type: ignore[dict-item]
    }


def dp_cross(url: str, side: int, chunk_size: int) -> Dict[str, float]:
    """models(model_id) x images(image_id) -> scores(model_id, image_id); then 1% of images change."""
    from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
    from datapipe.datatable import DataStore
    from datapipe.step.batch_transform import BatchTransform
    from datapipe.store.database import DBConn, TableStoreDB

    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "models": Table(store=TableStoreDB(dbconn, "x_models", [Column("model_id", Integer, primary_key=True),
                                                                    Column("w", Integer)], create_table=True)),
            "images": Table(store=TableStoreDB(dbconn, "x_images", [Column("image_id", Integer, primary_key=True),
                                                                    Column("v", Integer)], create_table=True)),
            "scores": Table(store=TableStoreDB(dbconn, "x_scores", [Column("model_id", Integer, primary_key=True),
                                                                    Column("image_id", Integer, primary_key=True),
                                                                    Column("score", Integer)], create_table=True)),
        }
    )

    def score(models: pd.DataFrame, images: pd.DataFrame, idx: pd.DataFrame) -> pd.DataFrame:
        # index lookups rather than two merges per batch: the benchmark measures Datapipe, not pandas
        w = idx["model_id"].map(models.set_index("model_id")["w"]).to_numpy()
        v = idx["image_id"].map(images.set_index("image_id")["v"]).to_numpy()
        return idx[["model_id", "image_id"]].assign(score=w * v)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(score, inputs=["models", "images"],
                                                                outputs=["scores"], chunk_size=chunk_size,
                                                                name="cross")]))
    ids = np.arange(side)
    ds.get_table("models").store_chunk(pd.DataFrame({"model_id": ids, "w": ids % 7}))
    ds.get_table("images").store_chunk(pd.DataFrame({"image_id": ids, "v": ids % 11}))
    first = timed(lambda: run_steps(ds, steps))
    keys = ["model_id", "image_id"]
    scores = ds.get_table("scores")
    d_first = check_output("cross_first_run", scores.get_data(), expected_cross(side), keys)
    k = max(1, int(side * CHANGE_FRACTION))
    reruns = []
    for r in range(RERUN_REPEATS):  # each round changes another 1 % of the images
        changed = ids[r * k:(r + 1) * k]
        ds.get_table("images").store_chunk(pd.DataFrame({"image_id": changed, "v": changed % 11 + 1}))
        reruns.append(timed(lambda: run_steps(ds, steps)))
    d_rerun = check_output("cross_rerun_1pct_side", scores.get_data(), expected_cross(side, RERUN_REPEATS * k), keys)
    return {"cross_first_run": first, "cross_rerun_1pct_side": _median(reruns),
            "samples_cross_rerun_1pct_side": reruns,  # type: ignore[dict-item]
            "digest_cross_first_run": d_first, "digest_cross_rerun_1pct_side": d_rerun}  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------- bare driver


class Raw:
    """A bare DB-API connection (sqlite3 or psycopg 3) and the primitive operations of a run."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite"):
            self.con: Any = sqlite3.connect(url.split("///", 1)[1])
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self.ph, self.pg = "?", False
        else:
            import psycopg

            dsn = url.replace("postgresql+psycopg://", "postgresql://")
            self.con = psycopg.connect(dsn)
            self.ph, self.pg = "%s", True
        self.cur = self.con.cursor()
        self.n_tables = 0
        self.columns: Dict[str, Tuple[List[str], List[str], List[str]]] = {}  # names, SQL types, keys

    def fresh_tables(self, keys: Sequence[str] = ("id",), payload: Sequence[str] = ("x", "s")) -> Tuple[str, str]:
        """A new data table (``keys`` then ``payload`` columns; ``s`` is text, others integers) and a new
        metadata table, both with primary key ``keys``."""
        self.n_tables += 1
        data, meta = f"raw_data_{self.n_tables}", f"raw_meta_{self.n_tables}"
        pk = f"PRIMARY KEY ({', '.join(keys)})"
        self.columns[data] = ([*keys, *payload], ["INTEGER"] * len(keys) + ["TEXT" if c == "s" else "INTEGER"
                                                                             for c in payload], list(keys))
        self.columns[meta] = ([*keys, *META_COLUMNS], ["INTEGER"] * len(keys) + ["BIGINT"] + ["FLOAT"] * 4,
                              list(keys))
        for t in (data, meta):
            self.cur.execute(f"DROP TABLE IF EXISTS {t}")
            names, types, _ = self.columns[t]
            # as Datapipe's metadata tables on SQLite: rows in key order unless the key is the rowid
            clustered = " WITHOUT ROWID" if t == meta and not self.pg and len(keys) > 1 else ""
            self.cur.execute(f"CREATE TABLE {t} ({', '.join(f'{n} {ty}' for n, ty in zip(names, types))}, {pk})"
                             f"{clustered}")
        self.con.commit()
        return data, meta

    def upsert(self, table: str, rows: Sequence[Tuple[Any, ...]]) -> float:
        """Write ``rows`` over the rows of ``table`` with the same keys (or as new rows) and commit: the
        driver's fastest upsert (COPY cannot update): ``INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT``
        on PostgreSQL, ``executemany`` of ``INSERT ... ON CONFLICT`` on SQLite."""
        names, types, keys = self.columns[table]
        update = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
        conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update}"
        t = time.perf_counter()
        if self.pg:
            arrays = ", ".join(f"%s::{ty}[]" for ty in types)
            self.cur.execute(f"INSERT INTO {table} SELECT * FROM unnest({arrays}) {conflict}",
                             [list(col) for col in zip(*rows)])
        else:
            self.cur.executemany(f"INSERT INTO {table} VALUES ({','.join([self.ph] * len(names))}) {conflict}", rows)
        self.con.commit()
        return time.perf_counter() - t

    def write(self, table: str, rows: Sequence[Tuple[Any, ...]]) -> float:
        """Insert ``rows`` (executemany on SQLite, COPY on PostgreSQL) and commit."""
        t = time.perf_counter()
        width = len(rows[0])
        if self.pg:
            with self.cur.copy(f"COPY {table} FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        else:
            self.cur.executemany(f"INSERT INTO {table} VALUES ({','.join([self.ph] * width)})", rows)
        self.con.commit()
        return time.perf_counter() - t

    def read_all(self, table: str) -> float:
        t = time.perf_counter()
        self.cur.execute(f"SELECT id, x, s FROM {table}")
        self.cur.fetchall()
        return time.perf_counter() - t

    def read_keys(self, table: str, ids: List[int]) -> float:
        t = time.perf_counter()
        if self.pg:
            self.cur.execute(f"SELECT id, x, s FROM {table} WHERE id = ANY(%s)", (ids,))
        else:
            self.cur.execute(f"SELECT id, x, s FROM {table} WHERE id IN (SELECT value FROM json_each(?))",
                             (str(ids),))
        self.cur.fetchall()
        return time.perf_counter() - t

    def delete_keys(self, table: str, ids: List[int]) -> float:
        """Delete the rows of ``ids`` in one statement (an array on PostgreSQL, a JSON list on SQLite)."""
        t = time.perf_counter()
        if self.pg:
            self.cur.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", (ids,))
        else:
            self.cur.execute(f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (str(ids),))
        self.con.commit()
        return time.perf_counter() - t

    def tombstone(self, table: str, ids: List[int]) -> float:
        """Mark the metadata rows of ``ids`` deleted (``delete_ts``) in one statement."""
        t = time.perf_counter()
        if self.pg:
            self.cur.execute(f"UPDATE {table} SET delete_ts = 2.0, update_ts = 2.0 WHERE id = ANY(%s)", (ids,))
        else:
            self.cur.execute(f"UPDATE {table} SET delete_ts = 2.0, update_ts = 2.0 "
                             "WHERE id IN (SELECT value FROM json_each(?))", (str(ids),))
        self.con.commit()
        return time.perf_counter() - t

    def noop_query(self, table: str) -> float:
        """The least a no-op run must do: one indexed lookup of the newest change."""
        t = time.perf_counter()
        self.cur.execute(f"SELECT max(update_ts) FROM {table}")
        self.cur.fetchall()
        return time.perf_counter() - t


META_COLUMNS = ["hash", "create_ts", "update_ts", "process_ts", "delete_ts"]


def _rows(n: int, start: int = 0) -> Tuple[List[Tuple[Any, ...]], List[Tuple[Any, ...]]]:
    df = input_frame(n, start)
    data = list(zip(df["id"].tolist(), df["x"].tolist(), df["s"].tolist()))
    meta = [(i, 0, 1.0, 1.0, 1.0, None) for i in df["id"].tolist()]
    return data, meta


def raw_floor(url: str, n: int) -> Dict[str, float]:
    """Bare-driver time for the same work as each Datapipe phase (the floor).

    A first run writes new rows (COPY on PostgreSQL, ``executemany`` on SQLite, into empty tables). A
    rerun changes rows that exist, as Datapipe's must: its floor upserts them into the tables the first
    run filled (``Raw.upsert``), and a deletion deletes the output rows and overwrites their two metadata
    rows (the tombstone and the step's record). The cross join's tables have its two-column key.
    """
    raw = Raw(url)
    data, meta = _rows(n)
    src, src_meta = raw.fresh_tables()
    res: Dict[str, float] = {}
    res["load"] = raw.write(src, data) + raw.write(src_meta, meta)
    # first run: read the input once, write the output and two metadata rows per record
    out, out_meta = raw.fresh_tables()
    _, step_meta = raw.fresh_tables()
    res["first_run"] = raw.read_all(src) + raw.write(out, data) + raw.write(out_meta, meta) + raw.write(step_meta, meta)
    res["noop_rerun"] = raw.noop_query(src_meta)
    k = max(1, int(n * CHANGE_FRACTION))
    changed, deleted = [], []
    for r in range(RERUN_REPEATS):
        # 1% changed: read those rows by key, overwrite their output rows and two metadata rows each
        kdata, kmeta = _rows(k, r * k)
        ids = [row[0] for row in kdata]
        changed.append(raw.read_keys(src, ids) + raw.upsert(out, kdata) + raw.upsert(out_meta, kmeta)
                       + raw.upsert(step_meta, kmeta))
        # 1% deleted (other keys): delete the output rows, mark their metadata rows deleted, overwrite
        # the step's rows
        gone = _rows(k, n - (r + 1) * k)[1]
        gone_ids = [row[0] for row in gone]
        deleted.append(raw.delete_keys(out, gone_ids) + raw.tombstone(out_meta, gone_ids)
                       + raw.upsert(step_meta, gone))
    res["rerun_1pct_changed"] = _median(changed)
    res["rerun_1pct_deleted"] = _median(deleted)
    raw.con.close()
    return res


def _pair_rows(side: int, images: int, start_image: int = 0) -> Tuple[List[Tuple[Any, ...]], List[Tuple[Any, ...]]]:
    """Rows of every model with images ``start_image`` .. ``start_image + images - 1`` of a side x side cross
    join: ``(model_id, image_id, score)`` data rows and their metadata rows."""
    models = np.repeat(np.arange(side), images).tolist()
    image_ids = np.tile(np.arange(start_image, start_image + images), side).tolist()
    data = list(zip(models, image_ids, [m * i for m, i in zip(models, image_ids)]))
    return data, [(m, i, 0, 1.0, 1.0, 1.0, None) for m, i in zip(models, image_ids)]


def raw_cross_floor(url: str, side: int) -> Dict[str, float]:
    """The cross join: read both sides, write side² rows with the key (model_id, image_id) and two metadata
    rows each; then 1 % of the images changed: read them, overwrite their pairs' rows."""
    raw = Raw(url)
    src = raw.fresh_tables()[0]
    raw.write(src, _rows(side)[0])
    keys = ("model_id", "image_id")
    pdata, pmeta = _pair_rows(side, side)
    out, out_meta = raw.fresh_tables(keys, ("score",))
    _, step_meta = raw.fresh_tables(keys, ())
    side_ids = list(range(side))
    first = (2 * raw.read_keys(src, side_ids) + raw.write(out, pdata) + raw.write(out_meta, pmeta)
             + raw.write(step_meta, pmeta))
    k = max(1, int(side * CHANGE_FRACTION))
    reruns = []
    for r in range(RERUN_REPEATS):  # as ``dp_cross``: another 1 % of the images each round
        kdata, kmeta = _pair_rows(side, k, r * k)
        reruns.append(raw.read_keys(src, side_ids) + raw.upsert(out, kdata) + raw.upsert(out_meta, kmeta)
                      + raw.upsert(step_meta, kmeta))
    raw.con.close()
    return {"cross_first_run": first, "cross_rerun_1pct_side": _median(reruns)}


WORKERS: Dict[str, Callable[..., Dict[str, float]]] = {
    "dp_load": dp_load,
    "dp_first_run": dp_first_run,
    "dp_reruns": dp_reruns,
    "dp_cross": dp_cross,
    "raw_floor": raw_floor,
    "raw_cross_floor": raw_cross_floor,
}

"""Does the Ray executor pay off? Single-thread vs ``RayExecutor`` on a local Ray with 2 CPUs.

    nox -s bench_ray                        # both workloads, SQLite and PostgreSQL metadata
    python benchmarks/ray_speedup.py --db sqlite --batches 200 --ms 20

Two workloads, each run once single-threaded and once through Ray on fresh databases, with the
output table and the step's metadata compared afterwards (they must be identical):

``cpu``
    a CPU-bound step: ``--ms`` milliseconds of pure-Python work per batch, ``--batches`` batches of
    50 rows. Target: Ray at least 1.7x faster than single-threaded on 2 CPUs.
``metadata``
    a cheap step over many small batches (``--meta-batches`` of 20 rows): the cost is metadata
    reads and writes. Target: Ray no slower than 1.2x single-threaded.

Ray's own start-up is excluded (``ray.init`` happens before timing); shipping the step to the
workers is included. Results print as a table and go to ``benchmarks/results/ray_speedup.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pandas as pd
from sqlalchemy import Column, Integer, String

RESULTS = Path(__file__).resolve().parent / "results"
ROWS_PER_CPU_BATCH = 50
ROWS_PER_META_BATCH = 20


def spin(ms: float) -> int:
    """``ms`` milliseconds of pure-Python work (holds the GIL, like model code written in Python)."""
    deadline = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < deadline:
        n += sum(i * i for i in range(200)) % 7
    return n


def build(url: str, rows_per_batch: int, ms: float) -> Tuple[Any, List[Any]]:
    from datapipe.compute import Catalog, Pipeline, Table, build_compute
    from datapipe.datatable import DataStore
    from datapipe.step.batch_transform import BatchTransform
    from datapipe.store.database import DBConn, TableStoreDB

    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)

    def schema() -> List[Column]:
        return [Column("id", Integer, primary_key=True), Column("s", String)]

    def work(df: pd.DataFrame) -> pd.DataFrame:
        if ms:
            spin(ms)
        return df.assign(s=df["s"].str.upper())

    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", schema(), create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", schema(), create_table=True)),
        }
    )
    step = BatchTransform(work, ["inp"], ["out"], chunk_size=rows_per_batch, name="work")
    return ds, build_compute(ds, catalog, Pipeline([step]))


def run_once(url: str, rows: int, rows_per_batch: int, ms: float, executor: Optional[Any]) -> Tuple[float, Any]:
    from datapipe.compute import run_steps

    ds, steps = build(url, rows_per_batch, ms)
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(rows), "s": [f"row {i}" for i in range(rows)]}))
    started = time.perf_counter()
    result = run_steps(ds, steps, executor=executor)
    elapsed = time.perf_counter() - started
    if result is not None and hasattr(result, "raise_for_failures"):
        result.raise_for_failures()
    out = ds.get_table("out").get_data().sort_values("id").reset_index(drop=True)
    meta = steps[0].meta.get_metadata().sort_values("id").reset_index(drop=True)[["id", "is_success", "error"]]
    ds.meta_dbconn.con.dispose()
    return elapsed, (out, meta)


def compare(a: Any, b: Any) -> None:
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def measure(fresh_url: Callable[[], str], rows: int, rows_per_batch: int, ms: float) -> Dict[str, float]:
    from datapipe.executor.ray import RayExecutor

    single, single_state = run_once(fresh_url(), rows, rows_per_batch, ms, None)
    ray_s, ray_state = run_once(fresh_url(), rows, rows_per_batch, ms, RayExecutor())
    compare(single_state, ray_state)
    return {"single_s": single, "ray_s": ray_s, "speedup": single / ray_s}


def url_factory(kind: str, tmp: str, server: Any) -> Callable[[], str]:
    """Fresh, empty metadata databases of one kind."""
    counter = iter(range(10_000))
    if kind == "postgres":
        from datapipe.testing.services import create_database

        return lambda: create_database(server.url, prefix="raybench")
    return lambda: f"sqlite:///{tmp}/ray_{next(counter)}.db"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--ms", type=float, default=20.0)
    p.add_argument("--meta-batches", type=int, default=500)
    args = p.parse_args(argv)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = tempfile.mkdtemp(prefix="datapipe-ray-bench-")
    server: Any = None
    results: List[Dict[str, Any]] = []
    try:
        for kind in args.db.split(","):
            if kind == "postgres" and server is None:
                from datapipe.testing.services import PostgresServer

                server = PostgresServer().start()
            fresh_url = url_factory(kind, tmp, server)
            cpu = measure(fresh_url, args.batches * ROWS_PER_CPU_BATCH, ROWS_PER_CPU_BATCH, args.ms)
            results.append({"db": kind, "workload": "cpu", "target": ">= 1.7x", **cpu})
            meta = measure(fresh_url, args.meta_batches * ROWS_PER_META_BATCH, ROWS_PER_META_BATCH, 0)
            results.append({"db": kind, "workload": "metadata", "target": ">= 0.83x (Ray <= 1.2x slower)", **meta})
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'db':9} {'workload':9} {'single s':>9} {'ray s':>8} {'speedup':>8}  target")
    for r in results:
        times = f"{r['single_s']:9.2f} {r['ray_s']:8.2f} {r['speedup']:8.2f}"
        print(f"{r['db']:9} {r['workload']:9} {times}  {r['target']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_speedup.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

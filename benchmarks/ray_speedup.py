"""Does the Ray executor pay off? Single-thread vs ``RayExecutor`` on a local Ray with 2 CPUs.

    nox -s bench_ray                        # both workloads, SQLite and PostgreSQL metadata
    python benchmarks/ray_speedup.py --db sqlite --batches 200 --ms 20 --repeats 3
    python benchmarks/run.py --ray          # the same phases inside the main benchmark table

Two workloads, each run ``--repeats`` times single-threaded and through Ray, interleaved
(single, Ray, single, Ray, ...), every run on a fresh database; the speed-up is the ratio of the
medians. After every run the output table is checked against the expected rows computed from the
input (row count and content digest), the step's metadata must record every key as processed
without error, and the Ray run's table and metadata must equal the single-threaded run's:

``cpu``
    a CPU-bound step: ``--ms`` milliseconds of pure-Python work per batch, ``--batches`` batches of
    50 rows. Target: Ray at least 1.7x faster than single-threaded on 2 CPUs.
``metadata``
    a cheap step over many small batches (``--meta-batches`` of 20 rows): the cost is metadata
    reads and writes. Target: Ray no slower than 1.2x single-threaded (speed-up >= 0.83x).

Ray's own start-up is excluded: ``ray.init`` and one small untimed warm-up run through Ray (the
worker processes import pandas, SQLAlchemy and Datapipe on their first task, about 1.5 s on the
2-core machine) happen before timing. Shipping the step to the workers is included.
``--writes`` sets ``RayExecutor(writes=...)`` (default ``auto``); several, comma-separated, are measured
in the same interleaved rounds (single, Ray with each), to compare them. PostgreSQL is a throwaway server
started here, or ``POSTGRES_URL``. Results print as a table and go to
``benchmarks/results/ray_speedup.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pandas as pd
from sqlalchemy import Column, Integer, String

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS_PER_CPU_BATCH = 50
ROWS_PER_META_BATCH = 20
TARGETS = {"cpu": 1.7, "metadata": 1 / 1.2}  # minimum speed-up (single s / Ray s)


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


def input_rows(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(rows), "s": [f"row {i}" for i in range(rows)]})


def run_once(url: str, rows: int, rows_per_batch: int, ms: float, executor: Optional[Any]) -> Tuple[float, Any]:
    """One timed run on a fresh database; checks the output and the step metadata; returns (seconds, state)."""
    from workloads import check_output

    from datapipe.compute import run_steps

    ds, steps = build(url, rows_per_batch, ms)
    ds.get_table("inp").store_chunk(input_rows(rows))
    started = time.perf_counter()
    result = run_steps(ds, steps, executor=executor)
    elapsed = time.perf_counter() - started
    if result is not None and hasattr(result, "raise_for_failures"):
        result.raise_for_failures()
    out = ds.get_table("out").get_data().sort_values("id").reset_index(drop=True)
    expected = input_rows(rows)
    check_output("ray workload", out, expected.assign(s=expected["s"].str.upper()), ["id"])
    meta = steps[0].meta.get_metadata().sort_values("id").reset_index(drop=True)[["id", "is_success", "error"]]
    if len(meta) != rows or not meta["is_success"].all() or meta["error"].notna().any():
        raise AssertionError(f"step metadata: {len(meta)} keys, {int((~meta['is_success']).sum())} not successful")
    ds.meta_dbconn.con.dispose()
    return elapsed, (out, meta)


def compare(a: Any, b: Any) -> None:
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def measure(
    fresh_url: Callable[[], str], rows: int, rows_per_batch: int, ms: float, repeats: int, writes: List[str]
) -> List[Dict[str, Any]]:
    """``repeats`` interleaved rounds (single, then Ray with each ``writes`` mode); per mode the medians,
    their ratio and every sample."""
    from datapipe.executor.ray import RayExecutor

    singles: List[float] = []
    rays: Dict[str, List[float]] = {w: [] for w in writes}
    for _ in range(repeats):
        single, single_state = run_once(fresh_url(), rows, rows_per_batch, ms, None)
        singles.append(single)
        for w in writes:
            ray_s, ray_state = run_once(fresh_url(), rows, rows_per_batch, ms, RayExecutor(writes=w))
            compare(single_state, ray_state)
            rays[w].append(ray_s)
    return [{"writes": w, "single_s": _median(singles), "ray_s": _median(rays[w]),
             "speedup": _median(singles) / _median(rays[w]), "samples_single_s": singles, "samples_ray_s": rays[w],
             "checked": "output digest + metadata, Ray = single"} for w in writes]


def url_factory(kind: str, tmp: str, server_url: Optional[str]) -> Callable[[], str]:
    """Fresh, empty metadata databases of one kind."""
    counter = iter(range(10_000))
    if kind == "postgres":
        from datapipe.testing.services import create_database

        assert server_url is not None
        return lambda: create_database(server_url, prefix="raybench")
    return lambda: f"sqlite:///{tmp}/ray_{next(counter)}.db"


def run_phases(kinds: List[str], batches: int = 200, ms: float = 20.0, meta_batches: int = 500, repeats: int = 3,
               writes: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Both workloads on each database kind; one result dict per (db, workload)."""
    import ray

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # workloads.check_output
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = tempfile.mkdtemp(prefix="datapipe-ray-bench-")
    server: Any = None
    server_url = os.environ.get("POSTGRES_URL")
    results: List[Dict[str, Any]] = []
    writes = writes or ["auto"]
    try:
        from datapipe.executor.ray import RayExecutor

        warm = url_factory("sqlite", tmp, None)
        run_once(warm(), 20 * ROWS_PER_CPU_BATCH, ROWS_PER_CPU_BATCH, 5, RayExecutor())  # untimed
        for kind in kinds:
            if kind == "postgres" and server_url is None:
                from datapipe.testing.services import PostgresServer

                server = PostgresServer().start()
                server_url = server.url
            fresh_url = url_factory(kind, tmp, server_url)
            for workload, (n_batches, rows_per_batch, work_ms) in (
                ("cpu", (batches, ROWS_PER_CPU_BATCH, ms)),
                ("metadata", (meta_batches, ROWS_PER_META_BATCH, 0.0)),
            ):
                print(f"[ray {kind}] {workload}: {n_batches} batches x {repeats} ...", file=sys.stderr, flush=True)
                for r in measure(fresh_url, n_batches * rows_per_batch, rows_per_batch, work_ms, repeats, writes):
                    results.append({"db": kind, "workload": workload, "batches": n_batches,
                                    "min_speedup": TARGETS[workload], "load": os.getloadavg()[0], **r})
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--ms", type=float, default=20.0)
    p.add_argument("--meta-batches", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="interleaved single/Ray pairs per workload (medians)")
    p.add_argument("--writes", default="auto",
                   help="RayExecutor(writes=...): auto, driver, workers; comma-separated to compare, interleaved")
    p.add_argument("--json", default=str(RESULTS / "ray_speedup.json"), help="where to write the results")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    writes = [w for w in args.writes.split(",") if w]
    bad = [w for w in writes if w not in ("auto", "driver", "workers")]
    if bad:
        p.error(f"unknown --writes {bad}")
    results = run_phases([k for k in args.db.split(",") if k], args.batches, args.ms, args.meta_batches,
                         args.repeats, writes)
    print(f"{'db':9} {'workload':9} {'writes':8} {'single s':>9} {'ray s':>8} {'speedup':>8}  target   "
          "samples (single / Ray)")
    for r in results:
        times = f"{r['single_s']:9.2f} {r['ray_s']:8.2f} {r['speedup']:7.2f}x"
        ok = "ok  " if r["speedup"] >= r["min_speedup"] else "MISS"
        samples = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["samples_single_s"], r["samples_ray_s"]))
        print(f"{r['db']:9} {r['workload']:9} {r['writes']:8} {times}  >={r['min_speedup']:.2f}x {ok}  {samples}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The large-N phase: ten million records in bounded memory, growth per million records.

``run.py`` hands every ``--sizes`` value of at least ``SCALE_MIN_N`` (2 000 000) to this module
instead of its floor comparison (the bare-driver floor builds its rows in Python lists, GiBs at
10 M). For each database it measures a small reference N (``REFERENCE_N``, 100 000) and each
large N with the same workload, each group of phases in a fresh worker process:

* ``load``: N rows generated and stored ``LOAD_CHUNK`` rows at a time (no N-row frame anywhere);
* ``first_run``: the one-input ``BatchTransform`` of ``workloads.py`` over all N keys, with a
  timing breakdown (finding the keys, reading inputs, the function, writing results) and a check
  of the output: row count and ``sum(x)`` must equal N and twice the input's;
* ``noop_rerun``: after all sizes, ``NOOP_ROUNDS`` rounds that each rerun every size's pipeline
  (median of ``NOOP_REPEATS`` no-op runs per worker), interleaved; the median over the rounds;
* ``rerun_0.1pct_changed`` / ``rerun_0.1pct_deleted``: 0.1 % of the rows changed (then deleted),
  median of ``RERUN_REPEATS``, each checked. 0.1 % rather than the 1 % of the smaller sizes: at
  10 M, 1 % is 100 000 rows, a small first run rather than a rerun.

The table gives seconds and seconds per million records of N (``s/M``) per phase, and marks:

* ``peak RSS``: the largest ``ru_maxrss`` of the load, first-run and rerun workers, ``<= 1 GiB``;
* ``growth``: a phase's ``s/M`` at N over its ``s/M`` at the reference N, at most
  ``GROWTH_SLACK`` (1.5: the machine is shared and a 10 M run lasts minutes, so +50 % is noise
  allowance, not a licence for N log N; a quadratic effect would show as 10x or more);
* ``no-op flat``: the no-op rerun at N at most ``NOOP_FLAT`` (2x) the reference's (with a 5 ms
  floor, below which timings are jitter) and at most 0.1 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SCALE_MIN_N = 2_000_000
REFERENCE_N = 100_000
SCALE_FRACTION = 0.001
LOAD_CHUNK = 50_000
NOOP_REPEATS = 5
NOOP_ROUNDS = 3
RERUN_REPEATS = 3
GROWTH_SLACK = 1.5
NOOP_FLAT = 2.0
NOOP_LIMIT_S = 0.1
RSS_LIMIT_MIB = 1024.0
PHASES = ["load", "first_run", "noop_rerun", "rerun_0.1pct_changed", "rerun_0.1pct_deleted"]
LINEAR_PHASES = ["load", "first_run", "rerun_0.1pct_changed", "rerun_0.1pct_deleted"]


# ------------------------------------------------------------------------------------- workers


def _output_digest(ds: Any) -> Dict[str, int]:
    """Row counts and sum(x) of the input and output tables, computed by the database."""
    with ds.meta_dbconn.read() as con:
        row = con.exec_driver_sql(
            "SELECT (SELECT count(*) FROM bench_inp), (SELECT coalesce(sum(x), 0) FROM bench_inp), "
            "(SELECT count(*) FROM bench_out), (SELECT coalesce(sum(x), 0) FROM bench_out)"
        ).one()
    return {"inp_rows": int(row[0]), "inp_sum": int(row[1]), "out_rows": int(row[2]), "out_sum": int(row[3])}


def _check_digest(ds: Any, expected_rows: int, what: str) -> None:
    d = _output_digest(ds)
    if d["inp_rows"] != expected_rows or d["out_rows"] != expected_rows or d["out_sum"] != 2 * d["inp_sum"]:
        raise AssertionError(f"{what}: wrong output {d}, expected {expected_rows} rows and out sum = 2 x input sum")


def scale_load(url: str, n: int, chunk_size: int) -> Dict[str, float]:
    import workloads

    ds, _ = workloads._one_input_pipeline(url, chunk_size)
    inp = ds.get_table("inp")

    def load() -> None:
        for start in range(0, n, LOAD_CHUNK):
            inp.store_chunk(workloads.input_frame(min(LOAD_CHUNK, n - start), start))

    return {"load": workloads.timed(load), "load_peak_rss_mib": workloads.peak_rss_mib()}


class Breakdown:
    """Wall time spent inside a few methods during a run (wrapped for the run, restored after)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}
        self._restore: List[Callable[[], None]] = []

    def wrap(self, owner: Any, method: str, label: str) -> None:
        original = owner.__dict__[method]

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, method, timed)
        self._restore.append(lambda: setattr(owner, method, original))

    def restore(self) -> None:
        for undo in reversed(self._restore):
            undo()


def _breakdown() -> Breakdown:
    from datapipe.datatable import DataStore
    from datapipe.meta.step_meta import StepMeta
    from datapipe.sql.connection import PendingCommit
    from datapipe.sql.pages import MaterialisedRows
    from datapipe.step.batch_transform import BaseBatchTransformStep, BatchTransformStep

    b = Breakdown()
    b.wrap(StepMeta, "open_changed_keys", "change query (evaluate + hold keys)")
    b.wrap(MaterialisedRows, "_read_page", "read key pages")
    b.wrap(BaseBatchTransformStep, "read_input", "read input rows")
    b.wrap(BatchTransformStep, "compute_batch", "compute_batch (read inputs + function)")
    b.wrap(DataStore, "start_write", "write outputs + metadata (one transaction; sent)")
    b.wrap(PendingCommit, "wait", "wait for a batch's COMMIT (PostgreSQL, in flight)")
    return b


def scale_first_run(url: str, n: int, chunk_size: int) -> Dict[str, Any]:
    import workloads

    from datapipe.compute import run_steps
    from datapipe.step import batch_transform

    ds, steps = workloads._one_input_pipeline(url, chunk_size)
    rss_before = workloads.peak_rss_mib()
    b = _breakdown()
    snapshots = b.seconds
    original_snapshot = batch_transform.take_snapshot

    def take_snapshot(dbconn: Any) -> Any:  # batch_transform imported it by name: time it there
        t = time.perf_counter()
        try:
            return original_snapshot(dbconn)
        finally:
            snapshots["take_snapshot"] = snapshots.get("take_snapshot", 0.0) + time.perf_counter() - t

    batch_transform.take_snapshot = take_snapshot  # type: ignore[assignment]
    try:
        elapsed = workloads.timed(lambda: run_steps(ds, steps))
    finally:
        batch_transform.take_snapshot = original_snapshot  # type: ignore[assignment]
        b.restore()
    _check_digest(ds, n, "first run")
    return {"first_run": elapsed, "peak_rss_mib": workloads.peak_rss_mib(), "rss_before_run_mib": rss_before,
            "breakdown": {k: round(v, 3) for k, v in b.seconds.items()}}


def scale_reruns(url: str, n: int, chunk_size: int) -> Dict[str, Any]:
    import workloads

    from datapipe.compute import run_steps

    ds, steps = workloads._one_input_pipeline(url, chunk_size)
    inp, out = ds.get_table("inp"), ds.get_table("out")
    noop = [workloads.timed(lambda: run_steps(ds, steps)) for _ in range(NOOP_REPEATS)]
    k = max(1, int(n * SCALE_FRACTION))
    changed_t, deleted_t = [], []
    for r in range(RERUN_REPEATS):
        start = (r * n) // RERUN_REPEATS  # spread over the key range: first, middle, last third
        changed = workloads.input_frame(k, start)
        changed["x"] = changed["x"] + 1
        inp.store_chunk(changed)
        changed_t.append(workloads.timed(lambda: run_steps(ds, steps)))
        got = out.get_data(changed[["id"]]).set_index("id").loc[changed["id"], "x"].to_numpy()
        if not (got == changed["x"].to_numpy() * 2).all():
            raise AssertionError("0.1 % change was not propagated")
    for r in range(RERUN_REPEATS):
        inp.delete_by_idx(pd.DataFrame({"id": np.arange(n - (r + 1) * k, n - r * k)}))
        deleted_t.append(workloads.timed(lambda: run_steps(ds, steps)))
    _check_digest(ds, n - RERUN_REPEATS * k, "0.1 % reruns")
    return {
        "noop_rerun": workloads._median(noop),
        "rerun_0.1pct_changed": workloads._median(changed_t),
        "rerun_0.1pct_deleted": workloads._median(deleted_t),
        "samples_noop_rerun": noop,
        "samples_rerun_0.1pct_changed": changed_t,
        "samples_rerun_0.1pct_deleted": deleted_t,
        "reruns_peak_rss_mib": workloads.peak_rss_mib(),
    }


def scale_noop(url: str, n: int, chunk_size: int) -> Dict[str, Any]:
    """No-op reruns only (median of NOOP_REPEATS), for the interleaved flatness check."""
    import workloads

    from datapipe.compute import run_steps

    ds, steps = workloads._one_input_pipeline(url, chunk_size)
    return {"noop_rerun": workloads._median([workloads.timed(lambda: run_steps(ds, steps))
                                             for _ in range(NOOP_REPEATS)])}


WORKERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "scale_noop": scale_noop,
    "scale_load": scale_load,
    "scale_first_run": scale_first_run,
    "scale_reruns": scale_reruns,
}


# ------------------------------------------------------------------------------------- driver


def worker(name: str, *args: Any) -> Dict[str, Any]:
    """Run ``scale.<name>(*args)`` in a fresh interpreter (its own peak RSS); return its result."""
    import workloads

    return workloads.in_worker(["scale"], name, *args)


def measure_one(dbs: Any, kind: str, n: int, chunk: int) -> Dict[str, Any]:
    url = dbs.fresh(kind)
    dp: Dict[str, Any] = {}
    for label, name in (("load", "scale_load"), ("first run", "scale_first_run"), ("reruns", "scale_reruns")):
        print(f"[{kind} N={n} scale] {label} ...", flush=True)
        t = time.perf_counter()
        dp.update(worker(name, url, n, chunk))
        print(f"[{kind} N={n} scale] {label} done in {time.perf_counter() - t:.1f} s", flush=True)
    dp["max_peak_rss_mib"] = max(dp["load_peak_rss_mib"], dp["peak_rss_mib"], dp["reruns_peak_rss_mib"])
    return {"db": kind, "n": n, "chunk_size": chunk, "fraction": SCALE_FRACTION, "datapipe": dp, "url": url}


def measure(dbs: Any, kind: str, sizes: List[int], chunk: int, reference: int = REFERENCE_N) -> List[Dict[str, Any]]:
    """The reference N and every N of ``sizes`` on database ``kind``; then the no-op rerun again on
    each of them, interleaved (``NOOP_ROUNDS`` rounds), so that flatness is judged on timings taken
    under the same machine load rather than minutes apart."""
    results = [measure_one(dbs, kind, reference, chunk)]
    results[0]["reference"] = True
    for n in sizes:
        results.append(measure_one(dbs, kind, n, chunk))
    samples: Dict[int, List[float]] = {r["n"]: [] for r in results}
    print(f"[{kind} scale] no-op reruns, interleaved ...", flush=True)
    for _ in range(NOOP_ROUNDS):
        for r in results:
            samples[r["n"]].append(worker("scale_noop", r["url"], r["n"], chunk)["noop_rerun"])
    for r in results:
        r["datapipe"]["samples_noop_interleaved"] = samples[r["n"]]
        r["datapipe"]["noop_rerun"] = sorted(samples[r["n"]])[len(samples[r["n"]]) // 2]
        del r["url"]
    return results


def _per_million(seconds: float, n: int) -> float:
    return seconds / (n / 1e6)


def verdicts(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (db, N, phase) with s/M, growth against the reference and the ok/MISS marks."""
    rows: List[Dict[str, Any]] = []
    for kind in sorted({r["db"] for r in results}, reverse=True):
        group = [r for r in results if r["db"] == kind]
        ref = next((r for r in group if r.get("reference")), min(group, key=lambda r: r["n"]))
        for r in sorted(group, key=lambda r: r["n"]):
            for phase in PHASES:
                t = r["datapipe"][phase]
                row = {"db": kind, "n": r["n"], "phase": phase, "seconds": t,
                       "per_million": _per_million(t, r["n"]), "growth": None, "verdict": ""}
                if r is not ref and phase in LINEAR_PHASES:
                    growth = row["per_million"] / _per_million(ref["datapipe"][phase], ref["n"])
                    row["growth"] = growth
                    row["verdict"] = "ok" if growth <= GROWTH_SLACK else f"MISS (>{GROWTH_SLACK:g}x linear)"
                if r is not ref and phase == "noop_rerun":
                    base = max(ref["datapipe"][phase], 0.005)
                    row["growth"] = t / base
                    ok = t <= NOOP_FLAT * base and t <= NOOP_LIMIT_S
                    row["verdict"] = "ok" if ok else f"MISS (>{NOOP_FLAT:g}x N={ref['n']} or >{NOOP_LIMIT_S}s)"
                rows.append(row)
            rss = r["datapipe"]["max_peak_rss_mib"]
            rows.append({"db": kind, "n": r["n"], "phase": "peak RSS (MiB)", "seconds": rss, "per_million": None,
                         "growth": None,
                         "verdict": "ok" if rss <= RSS_LIMIT_MIB else f"MISS (>{RSS_LIMIT_MIB:g} MiB)"})
    return rows


def table(results: List[Dict[str, Any]]) -> str:
    head = (f"{'db':8} {'N':>9} {'scale phase (0.1 % reruns)':27} {'seconds':>9} {'s/M':>8} "
            f"{'vs ref':>7}  target")
    lines = [head, "-" * len(head)]
    for row in verdicts(results):
        if row["phase"].startswith("peak RSS"):
            lines.append(f"{row['db']:8} {row['n']:>9} {row['phase']:27} {row['seconds']:9.0f} {'':8} {'':7}  "
                         f"{row['verdict']}")
            continue
        growth = f"{row['growth']:6.2f}x" if row["growth"] is not None else "  (ref)"
        lines.append(f"{row['db']:8} {row['n']:>9} {row['phase']:27} {row['seconds']:9.3f} "
                     f"{row['per_million']:8.3f} {growth}  {row['verdict']}")
    lines.append("s/M: seconds per million records of N; vs ref: s/M over that of the reference N "
                 "(no-op: seconds over the reference's)")
    for r in results:
        if r.get("reference") or "breakdown" not in r["datapipe"]:
            continue
        total = r["datapipe"]["first_run"]
        parts = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in r["datapipe"]["breakdown"].items())
        lines.append(f"{r['db']} N={r['n']} first run {total:.1f} s: {parts}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """``python benchmarks/scale.py 10000000 [sqlite,postgres]``: only this phase (run.py does the same)."""
    import run

    args = list(sys.argv[1:] if argv is None else argv)
    sizes = [int(s) for s in (args[0] if args else "10000000").split(",")]
    kinds = (args[1] if len(args) > 1 else "sqlite,postgres").split(",")
    results: List[Dict[str, Any]] = []
    with run.Databases(kinds) as dbs:
        for kind in kinds:
            results.extend(measure(dbs, kind, sizes, 1000))
    print(table(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

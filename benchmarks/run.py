"""Datapipe benchmark suite: phase times against the bare-driver floor, on SQLite and PostgreSQL.

    python benchmarks/run.py                         # N = 100 000 and 1 000 000, sqlite + postgres
    python benchmarks/run.py --sizes 100000 --db sqlite --cross 0   # quick run

For every database and N it times (each group in a fresh worker process, so peak RSS is per group):
load N rows; first full run of a one-input BatchTransform (chunk_size 1000); no-op rerun (median of 5);
rerun after 1 % of inputs changed; rerun after 1 % deleted; and, once per database, a two-input
cross-join step (``--cross`` x ``--cross`` keys, then 1 % of one side changed). Next to each figure
it measures the same work with the bare driver (executemany on SQLite, COPY on PostgreSQL) and the
ratio. PostgreSQL runs on a throwaway server started here (or ``POSTGRES_URL``). Results go to
``benchmarks/results/`` as JSON and a PNG chart of time versus N per phase; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PHASES = ["load", "first_run", "noop_rerun", "rerun_1pct_changed", "rerun_1pct_deleted"]
CROSS_PHASES = ["cross_first_run", "cross_rerun_1pct_side"]
O2M_PHASES = ["o2m_first_run", "o2m_rerun_1pct_items", "o2m_rerun_1pct_anns"]  # benchmarks/joins.py
TARGETS = {  # phase -> (kind, limit): ratio to the floor, or absolute seconds
    "first_run": ("ratio", 5.0),
    "rerun_1pct_changed": ("ratio", 5.0),
    "rerun_1pct_deleted": ("ratio", 5.0),
    "noop_rerun": ("seconds", 0.1),
    **{phase: ("ratio", 5.0) for phase in [*CROSS_PHASES, *O2M_PHASES]},  # joins (issue 12)
}
RSS_LIMIT_MIB = 1024.0


def worker(name: str, *args: Any) -> Dict[str, float]:
    """Run ``workloads.<name>(*args)`` in a fresh interpreter; return its result dict."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import workloads, joins; "
        "w = {**workloads.WORKERS, **joins.WORKERS}; "
        "print('RESULT ' + json.dumps(w[sys.argv[2]](*json.loads(sys.argv[3]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(HERE), name, json.dumps(list(args))], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {name}{args} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


class Databases:
    """Fresh database URLs per measurement: SQLite files, or databases on one PostgreSQL server."""

    def __init__(self, kinds: List[str]) -> None:
        self.kinds = kinds
        self.tmp = tempfile.mkdtemp(prefix="datapipe-bench-")
        self.pg_server: Any = None
        self.pg_url: Optional[str] = os.environ.get("POSTGRES_URL")
        self.counter = 0

    def __enter__(self) -> Databases:
        if "postgres" in self.kinds and not self.pg_url:
            from datapipe.testing.services import PostgresServer

            self.pg_server = PostgresServer().start()
            self.pg_url = self.pg_server.url
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pg_server is not None:
            self.pg_server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def fresh(self, kind: str) -> str:
        self.counter += 1
        if kind == "sqlite":
            return f"sqlite:///{self.tmp}/bench_{self.counter}.db"
        from datapipe.testing.services import create_database

        assert self.pg_url is not None
        return create_database(self.pg_url, prefix="bench")


def measure(dbs: Databases, kind: str, n: int, chunk: int) -> Dict[str, Any]:
    url = dbs.fresh(kind)
    dp: Dict[str, float] = {}
    print(f"[{kind} N={n}] load ...", flush=True)
    dp.update(worker("dp_load", url, n, chunk))
    print(f"[{kind} N={n}] first run ...", flush=True)
    dp.update(worker("dp_first_run", url, n, chunk))
    print(f"[{kind} N={n}] reruns ...", flush=True)
    dp.update(worker("dp_reruns", url, n, chunk))
    print(f"[{kind} N={n}] bare-driver floor ...", flush=True)
    floor = worker("raw_floor", dbs.fresh(kind), n, 0)
    return {"db": kind, "n": n, "chunk_size": chunk, "datapipe": dp, "floor": floor}


def measure_cross(dbs: Databases, kind: str, side: int, chunk: int) -> Dict[str, Any]:
    print(f"[{kind}] cross join {side} x {side} ...", flush=True)
    dp = worker("dp_cross", dbs.fresh(kind), side, chunk)
    floor = worker("raw_floor", dbs.fresh(kind), 1, side)
    return {"db": kind, "n": side * side, "side": side, "chunk_size": chunk, "datapipe": dp,
            "floor": {k: floor[k] for k in CROSS_PHASES}}


def measure_one_to_many(dbs: Databases, kind: str, n: int, chunk: int) -> Dict[str, Any]:
    print(f"[{kind}] one-to-many join {n} items x {10 * n} annotations ...", flush=True)
    dp = worker("dp_one_to_many", dbs.fresh(kind), n, chunk)
    floor = worker("raw_one_to_many_floor", dbs.fresh(kind), n)
    return {"db": kind, "n": n, "join": "one_to_many", "chunk_size": chunk, "datapipe": dp, "floor": floor}


def verdict(phase: str, seconds: float, floor: Optional[float]) -> str:
    if phase not in TARGETS:
        return ""
    kind, limit = TARGETS[phase]
    if kind == "seconds":
        return "ok" if seconds <= limit else f"MISS (>{limit}s)"
    if not floor:
        return ""
    return "ok" if seconds / floor <= limit else f"MISS (>{limit:g}x)"


def table(results: List[Dict[str, Any]]) -> str:
    head = f"{'db':8} {'N':>9} {'phase':24} {'datapipe s':>11} {'floor s':>9} {'ratio':>7}  target"
    lines = [head, "-" * len(head)]
    for r in results:
        phases = O2M_PHASES if "join" in r else CROSS_PHASES if "side" in r else PHASES
        for phase in phases:
            t = r["datapipe"][phase]
            f = r["floor"].get(phase)
            ratio = f"{t / f:7.1f}" if f else "      -"
            floor_s = f"{f:9.3f}" if f is not None else "        -"
            lines.append(f"{r['db']:8} {r['n']:>9} {phase:24} {t:11.3f} {floor_s} {ratio}  {verdict(phase, t, f)}")
        if "peak_rss_mib" in r["datapipe"]:
            rss = r["datapipe"]["peak_rss_mib"]
            ok = "ok" if rss <= RSS_LIMIT_MIB else f"MISS (>{RSS_LIMIT_MIB:g} MiB)"
            lines.append(f"{r['db']:8} {r['n']:>9} {'peak RSS (first run)':24} {rss:8.0f} MiB {'':17}  {ok}")
    for kind in sorted({r["db"] for r in results}):
        noops = sorted((r["n"], r["datapipe"]["noop_rerun"]) for r in results if r["db"] == kind and "side" not in r
                       and "join" not in r)
        if len(noops) >= 2:
            (n0, t0), (n1, t1) = noops[0], noops[-1]
            ok = "ok" if t1 <= 2 * max(t0, 1e-3) else "MISS (>2x)"
            lines.append(f"{kind:8} no-op rerun at N={n1} vs N={n0}: {t1 / max(t0, 1e-9):.1f}x{'':28}  {ok}")
    return "\n".join(lines)


def chart(results: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if "side" not in r and "join" not in r]
    fig, axes = plt.subplots(1, len(PHASES), figsize=(4 * len(PHASES), 3.6))
    for ax, phase in zip(axes, PHASES):
        for kind, color in (("sqlite", "tab:blue"), ("postgres", "tab:orange")):
            rs = sorted((r for r in runs if r["db"] == kind), key=lambda r: r["n"])
            if not rs:
                continue
            ns = [r["n"] for r in rs]
            ax.plot(ns, [r["datapipe"][phase] for r in rs], "o-", color=color, label=f"{kind} datapipe")
            ax.plot(ns, [r["floor"][phase] for r in rs], "x--", color=color, alpha=0.6, label=f"{kind} floor")
        ax.set_title(phase, fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N rows")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated N values")
    p.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--cross", type=int, default=1000, help="side of the cross-join benchmark; 0 skips it")
    p.add_argument("--one-to-many", type=int, default=100_000,
                   help="items in the one-to-many join benchmark (10 annotations each); 0 skips it")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON and PNG results")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("sqlite", "postgres")]
    if bad:
        p.error(f"unknown --db {bad}; use sqlite and/or postgres")
    results: List[Dict[str, Any]] = []
    started = time.time()
    with Databases(kinds) as dbs:
        for kind in kinds:
            for n in sizes:
                results.append(measure(dbs, kind, n, args.chunk_size))
            if args.cross:
                results.append(measure_cross(dbs, kind, args.cross, args.chunk_size))
            if args.one_to_many:
                results.append(measure_one_to_many(dbs, kind, args.one_to_many, args.chunk_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = {"started": started, "seconds": time.time() - started, "python": sys.version.split()[0],
               "targets": TARGETS, "results": results}
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out / name).write_text(json.dumps(payload, indent=2))
    chart(results, out / "latest.png")
    print()
    print(table(results))
    print(f"\nwrote {out / 'latest.json'} and {out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Datapipe benchmark suite: phase times against the bare-driver floor, on SQLite and PostgreSQL.

    python benchmarks/run.py                         # N = 100 000 and 1 000 000, sqlite + postgres
    python benchmarks/run.py --sizes 100000 --db sqlite --cross 0   # quick run
    python benchmarks/run.py --ray --vs-015          # also the Ray phases and datapipe 0.15 side by side

For every database and N it times (each group in a fresh worker process, so peak RSS is per group):
load N rows; first full run of a one-input BatchTransform (chunk_size 1000); no-op rerun (median of 5);
rerun after 1 % of inputs changed; rerun after 1 % deleted; and, once per database, a two-input
cross-join step (``--cross`` x ``--cross`` keys, then 1 % of one side changed). Next to each figure
it measures the same work with the bare driver (executemany on SQLite, COPY on PostgreSQL) and the
ratio. Every phase's output is checked (row count and a content digest against rows computed
from the input with pandas), so a fast wrong answer fails the run.

``--rounds R`` (default 3) repeats all of that R times, interleaved (every workload once, then every
workload again, ...), each time on fresh databases; the table shows per phase the median of the R
Datapipe figures against the median of the R floor figures, with each round's ratio in the note. On a
shared machine whose speed drifts by tens of percent within minutes, one pair of measurements taken
minutes apart is not a verdict.

``--ray`` adds the phases of ``ray_speedup.py`` (single-threaded vs ``RayExecutor``, in a
subprocess of an interpreter with Ray, ``--ray-python``); ``--vs-015 [SIZES]`` the phases of
``vs_015.py`` (this Datapipe next to ``datapipe-core==0.15.0`` in a virtualenv of its own,
``--python015``, created when missing), both on the same databases and server.

PostgreSQL runs on a throwaway server started here (or ``POSTGRES_URL``). Results go to
``benchmarks/results/`` as JSON and a PNG chart of time versus N per phase; one table is printed
with a target and ``ok``/``MISS`` for every phase that ran (``PHASES`` below declares them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import scale  # the large-N phase (sizes >= scale.SCALE_MIN_N)
import workloads

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PHASES = ["load", "first_run", "noop_rerun", "rerun_1pct_changed", "rerun_1pct_deleted"]
CROSS_PHASES = ["cross_first_run", "cross_rerun_1pct_side"]
O2M_PHASES = ["o2m_first_run", "o2m_rerun_1pct_items", "o2m_rerun_1pct_anns"]  # benchmarks/joins.py


@dataclass(frozen=True)
class Target:
    """A phase's target. ``kind``:

    * ``ratio``: Datapipe's time / the reference time (the floor) <= ``limit``;
    * ``seconds``: Datapipe's time <= ``limit``;
    * ``speedup``: the reference time (single-threaded, datapipe 0.15) / Datapipe's time >= ``limit``;
    * ``mib``: the value (peak RSS) <= ``limit``;
    * ``growth``: the value at the largest N / at the smallest N <= ``limit``.
    """

    kind: str
    limit: float
    ref: str = "floor"  # what the reference column holds

    def ratio(self, value: float, ref: Optional[float]) -> Optional[float]:
        if self.kind in ("seconds", "mib") or not ref:
            return None
        return ref / value if self.kind == "speedup" else value / ref

    def verdict(self, value: float, ref: Optional[float]) -> str:
        if self.kind in ("seconds", "mib"):
            return "ok" if value <= self.limit else "MISS"
        r = self.ratio(value, ref)
        if r is None:
            return "MISS (no reference)"
        return "ok" if (r >= self.limit if self.kind == "speedup" else r <= self.limit) else "MISS"

    def text(self) -> str:
        return {"ratio": f"<= {self.limit:g}x {self.ref}", "seconds": f"<= {self.limit:g} s",
                "speedup": f">= {self.limit:.2g}x vs {self.ref}", "mib": f"<= {self.limit:g} MiB",
                "growth": f"<= {self.limit:g}x"}[self.kind]


# Every phase the table can show, with its target: one entry per phase (add new phases here).
PHASE_TARGETS: Dict[str, Target] = {
    "load": Target("ratio", 5.0),  # the spec sets none; held to the first run's
    "first_run": Target("ratio", 5.0),
    "noop_rerun": Target("seconds", 0.1),
    "rerun_1pct_changed": Target("ratio", 5.0),
    "rerun_1pct_deleted": Target("ratio", 5.0),
    "peak_rss_first_run": Target("mib", 1024.0),
    "noop_rerun_growth": Target("growth", 2.0, ref="smallest N"),
    "cross_first_run": Target("ratio", 5.0),
    "cross_rerun_1pct_side": Target("ratio", 5.0),
    "ray_cpu": Target("speedup", 1.7, ref="single"),
    "ray_metadata": Target("speedup", 1 / 1.2, ref="single"),
    **{f"vs015_{p}": Target("speedup", 1.0, ref="0.15") for p in PHASES},
    **{phase: Target("ratio", 5.0) for phase in O2M_PHASES},
}
# Issue 12 holds the one-input phases tighter than the spec's 5x: PostgreSQL within 3x of the floor,
# SQLite within 4x.
DB_TARGETS: Dict[Tuple[str, str], Target] = {
    (db, phase): Target("ratio", limit)
    for db, limit in (("postgres", 3.0), ("sqlite", 4.0))
    for phase in ("first_run", "rerun_1pct_changed", "rerun_1pct_deleted")
}
TARGETS = {name: (t.kind, t.limit) for name, t in PHASE_TARGETS.items()}


@dataclass
class Row:
    """One line of the table: ``value`` (seconds, or MiB / a growth factor) against ``ref``."""

    db: str
    n: str
    phase: str
    value: float
    ref: Optional[float] = None
    note: str = ""


def target_for(row: Row) -> Target:
    """The target ``row`` is judged by: its database's (``DB_TARGETS``), else its phase's."""
    return DB_TARGETS.get((row.db, row.phase), PHASE_TARGETS[row.phase])


def worker(name: str, *args: Any) -> Dict[str, float]:
    """Run ``workloads.<name>(*args)`` (or ``joins.<name>``) in a fresh interpreter; return its result dict."""
    return workloads.in_worker(["workloads", "joins"], name, *args)


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
    floor = worker("raw_floor", dbs.fresh(kind), n)
    return {"db": kind, "n": n, "chunk_size": chunk, "datapipe": dp, "floor": floor}


def measure_cross(dbs: Databases, kind: str, side: int, chunk: int) -> Dict[str, Any]:
    print(f"[{kind}] cross join {side} x {side} ...", flush=True)
    dp = worker("dp_cross", dbs.fresh(kind), side, chunk)
    floor = worker("raw_cross_floor", dbs.fresh(kind), side)
    return {"db": kind, "n": side * side, "side": side, "chunk_size": chunk, "datapipe": dp,
            "floor": {k: floor[k] for k in CROSS_PHASES}}


def measure_one_to_many(dbs: Databases, kind: str, n: int, chunk: int) -> Dict[str, Any]:
    print(f"[{kind}] one-to-many join {n} items x {10 * n} annotations ...", flush=True)
    dp = worker("dp_one_to_many", dbs.fresh(kind), n, chunk)
    floor = worker("raw_one_to_many_floor", dbs.fresh(kind), n)
    return {"db": kind, "n": n, "join": "one_to_many", "chunk_size": chunk, "datapipe": dp, "floor": floor}


def combine_rounds(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One result from the rounds of one measurement (``measure*``): per figure the median over rounds
    (peak RSS: the largest), every round's figures kept as ``rounds_datapipe`` / ``rounds_floor``. The
    outputs' digests must agree across rounds (the inputs are deterministic)."""
    first = rounds[0]
    combined = {k: v for k, v in first.items() if k not in ("datapipe", "floor")}
    for side in ("datapipe", "floor"):
        merged: Dict[str, Any] = {}
        for key, value in first[side].items():
            values = [r[side][key] for r in rounds]
            if isinstance(value, str):  # a digest
                if len(set(values)) != 1:
                    raise AssertionError(f"{first['db']} N={first['n']}: {key} differs between rounds: {values}")
                merged[key] = value
            elif isinstance(value, (int, float)):
                merged[key] = max(values) if key == "peak_rss_mib" else statistics.median(values)
            else:
                merged[key] = value
        combined[side] = merged
        combined[f"rounds_{side}"] = [r[side] for r in rounds]
    return combined


def _round_ratios(r: Dict[str, Any], phase: str) -> str:
    """For the note: each round's Datapipe / floor ratio of ``phase`` (its seconds when the target is
    seconds, not a ratio); empty for a single round."""
    pairs = list(zip(r.get("rounds_datapipe", []), r.get("rounds_floor", [])))
    if len(pairs) < 2:
        return ""
    if PHASE_TARGETS[phase].kind != "ratio" or not all(f.get(phase) for _, f in pairs):
        return "rounds: " + " ".join(f"{d[phase]:.3f}" for d, _ in pairs) + " s"
    return "rounds: " + " ".join(f"{d[phase] / f[phase]:.2f}x" for d, f in pairs)


def rows_of(results: List[Dict[str, Any]]) -> List[Row]:
    """The table rows of the floor-relative phases (``measure``, ``measure_cross``), combined rounds."""
    rows: List[Row] = []
    for r in results:
        phases = O2M_PHASES if "join" in r else CROSS_PHASES if "side" in r else PHASES
        for phase in phases:
            rows.append(Row(r["db"], str(r["n"]), phase, r["datapipe"][phase], r["floor"].get(phase),
                            _round_ratios(r, phase)))
        if "peak_rss_mib" in r["datapipe"]:
            rows.append(Row(r["db"], str(r["n"]), "peak_rss_first_run", r["datapipe"]["peak_rss_mib"]))
    for kind in sorted({r["db"] for r in results}):
        noops = sorted((r["n"], r["datapipe"]["noop_rerun"]) for r in results if r["db"] == kind and "side" not in r
                       and "join" not in r)
        if len(noops) >= 2:
            (n0, t0), (n1, t1) = noops[0], noops[-1]
            rows.append(Row(kind, f"{n1}/{n0}", "noop_rerun_growth", t1 / max(t0, 1e-3), 1.0))
    return rows


def table(rows: List[Row]) -> str:
    """One line per phase that ran: times, reference, ratio, target and ok / MISS."""
    head = (f"{'db':8} {'N':>15} {'phase':26} {'datapipe':>10} {'reference':>10} {'ratio':>8}  "
            f"{'target':22} result")
    lines = [head, "-" * len(head)]
    for row in rows:
        target = target_for(row)
        unit = {"mib": " MiB", "growth": "x"}.get(target.kind, " s")
        value = f"{row.value:.0f}{unit}" if target.kind == "mib" else f"{row.value:.3f}{unit}"
        ref = f"{row.ref:.3f} s" if row.ref is not None and target.kind not in ("growth", "mib") else "-"
        ratio = target.ratio(row.value, row.ref)
        ratio_s = f"{ratio:.2f}x" if ratio is not None and target.kind != "growth" else "-"
        verdict = target.verdict(row.value, row.ref)
        lines.append(f"{row.db:8} {row.n:>15} {row.phase:26} {value:>10} {ref:>10} {ratio_s:>8}  "
                     f"{target.text():22} {verdict}{('  ' + row.note) if row.note else ''}")
    return "\n".join(lines)


def measure_ray(dbs: Databases, kinds: List[str], python: str, repeats: int) -> Tuple[List[Row], List[Any]]:
    """The phases of ``ray_speedup.py`` in a subprocess of ``python`` (an interpreter with Ray)."""
    out = Path(dbs.tmp) / "ray.json"
    env = dict(os.environ)
    if dbs.pg_url:
        env["POSTGRES_URL"] = dbs.pg_url
    print(f"[ray] single-threaded vs RayExecutor ({repeats} interleaved pairs per workload) ...", flush=True)
    proc = subprocess.run([python, str(HERE / "ray_speedup.py"), "--db", ",".join(kinds), "--repeats", str(repeats),
                           "--json", str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ray_speedup.py failed:\n{proc.stderr[-4000:]}")
    results = json.loads(out.read_text())
    rows = []
    for r in results:
        samples = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["samples_single_s"], r["samples_ray_s"]))
        rows.append(Row(r["db"], f"{r['batches']} batches", f"ray_{r['workload']}", r["ray_s"], r["single_s"],
                        f"writes={r['writes']}; single/Ray s: {samples}; load {r['load']:.1f}"))
    return rows, results


def python015(path: Optional[str]) -> str:
    """An interpreter with datapipe-core==0.15.0: ``path``, or ``.nox/bench-015`` (created when missing)."""
    if path:
        return path
    venv = ROOT / ".nox" / "bench-015"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"[0.15] creating {venv} with datapipe-core==0.15.0 ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "datapipe-core==0.15.0", "psycopg2-binary"],
                       check=True)
    return str(python)


def measure_015(dbs: Databases, kinds: List[str], sizes: List[int], python: str, chunk: int) -> Tuple[
        List[Row], List[Any]]:
    """The ``workloads.py`` phases under this Datapipe and under 0.15 (``vs_015.py``), fresh databases each."""
    import vs_015

    print(f"[0.15] {python}: datapipe-core 0.15.0 at {vs_015.check_is_015(python)}", flush=True)
    rows, results = [], []
    for kind in kinds:
        for n in sizes:
            print(f"[{kind} N={n}] this Datapipe and 0.15 side by side ...", flush=True)
            ours = vs_015.measure(sys.executable, dbs.fresh(kind), n, chunk)
            old_url = dbs.fresh(kind).replace("postgresql+psycopg://", "postgresql+psycopg2://")
            old = vs_015.measure(python, old_url, n, chunk)
            same = vs_015.same_output(ours, old)
            results.append({"db": kind, "n": n, "ours": ours, "datapipe_015": old, "same_output": same})
            for phase in PHASES:
                rows.append(Row(kind, str(n), f"vs015_{phase}", ours[phase], old[phase], "" if phase == "load" else
                                ("same output as 0.15" if same else "OUTPUT DIFFERS FROM 0.15")))
            if not same:
                raise AssertionError(f"{kind} N={n}: this Datapipe and 0.15 wrote different outputs")
    return rows, results


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
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated N values; empty string: none")
    p.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--cross", type=int, default=1000, help="side of the cross-join benchmark; 0 skips it")
    p.add_argument("--ray", action="store_true", help="also the Ray phases (benchmarks/ray_speedup.py)")
    p.add_argument("--ray-python", default=sys.executable, help="interpreter with Ray for --ray (default: this one)")
    p.add_argument("--ray-repeats", type=int, default=3, help="interleaved single/Ray pairs per Ray workload")
    p.add_argument("--vs-015", nargs="?", const="10000,100000", default="", metavar="SIZES",
                   help="also this Datapipe next to datapipe 0.15 at SIZES (default 10000,100000)")
    p.add_argument("--python015", default=None,
                   help="interpreter with datapipe-core==0.15.0 (default: .nox/bench-015, created when missing)")
    p.add_argument("--one-to-many", type=int, default=100_000,
                   help="items in the one-to-many join benchmark (10 annotations each); 0 skips it")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of the floor-relative phases; the table shows medians (default 3)")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON and PNG results")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("sqlite", "postgres")]
    if bad:
        p.error(f"unknown --db {bad}; use sqlite and/or postgres")
    sizes_015 = [int(s) for s in args.vs_015.split(",") if s]
    old_python = python015(args.python015) if sizes_015 else ""
    sys.path.insert(0, str(HERE))
    results: List[Dict[str, Any]] = []
    large, sizes = [n for n in sizes if n >= scale.SCALE_MIN_N], [n for n in sizes if n < scale.SCALE_MIN_N]
    scale_results: List[Dict[str, Any]] = []
    extra: Dict[str, Any] = {}
    rows: List[Row] = []
    started = time.time()
    load_before = os.getloadavg()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    with Databases(kinds) as dbs:
        rounds: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"--- round {r + 1} of {args.rounds}", flush=True)
            for kind in kinds:
                for n in sizes:
                    rounds.setdefault((kind, "one_input", n), []).append(measure(dbs, kind, n, args.chunk_size))
                if args.cross:
                    rounds.setdefault((kind, "cross", args.cross), []).append(
                        measure_cross(dbs, kind, args.cross, args.chunk_size))
                if args.one_to_many:
                    rounds.setdefault((kind, "o2m", args.one_to_many), []).append(
                        measure_one_to_many(dbs, kind, args.one_to_many, args.chunk_size))
        results = [combine_rounds(samples) for samples in rounds.values()]
        for kind in kinds:
            if large:
                scale_results.extend(scale.measure(dbs, kind, large, args.chunk_size))
        rows.extend(rows_of(results))
        if args.ray:
            ray_rows, extra["ray"] = measure_ray(dbs, kinds, args.ray_python, args.ray_repeats)
            rows.extend(ray_rows)
        if sizes_015:
            old_rows, extra["vs_015"] = measure_015(dbs, kinds, sizes_015, old_python, args.chunk_size)
            rows.extend(old_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = {"started": started, "seconds": time.time() - started, "python": sys.version.split()[0],
               "rounds": args.rounds,
               "load_before": load_before, "load_after": os.getloadavg(),
               "targets": {name: t.text() for name, t in PHASE_TARGETS.items()}, "results": results,
               "scale": scale_results, **extra,
               "table": [row.__dict__ | {"target": target_for(row).text(),
                                         "result": target_for(row).verdict(row.value, row.ref)} for row in rows]}
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out / name).write_text(json.dumps(payload, indent=2))
    if any("side" not in r and "join" not in r for r in results):
        chart(results, out / "latest.png")
    print()
    if rows:
        print(table(rows))
    if scale_results:
        print()
        print(scale.table(scale_results))
    if args.rounds > 1 and results:
        print(f"\nfloor-relative phases: medians of {args.rounds} interleaved rounds, each round's ratio in the note")
    print(f"\nload average before/after: {' '.join(f'{x:.2f}' for x in load_before)} / "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} CPUs)")
    print(f"wrote {out / 'latest.json'}" + (f" and {out / 'latest.png'}" if (out / "latest.png").exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

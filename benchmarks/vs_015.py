"""Datapipe next to datapipe 0.15, side by side on the same workload and machine.

    nox -s bench_015                                   # N = 10 000, SQLite and PostgreSQL
    python benchmarks/vs_015.py --python015 PATH --sizes 10000 --db sqlite

The phases of ``workloads.py`` (load, first run, no-op rerun, 1 % changed, 1 % deleted) are written
against the 0.15 public API, so the same functions run under both: once with this interpreter
(this checkout's Datapipe) and once with ``--python015``, an interpreter whose environment has
``datapipe-core==0.15.0`` installed (``nox -s bench_015`` creates one). Each phase group runs in a fresh
process on a fresh database. Prints seconds per phase and how many times faster this Datapipe is.
0.15 is driven as a black box through its public API only. Both implementations' outputs are
checked against rows computed from the input (``workloads.check_output``: row count and content
digest) after the first run, the 1 % changed and the 1 % deleted reruns, and their digests must
be equal (``same_output``). ``python benchmarks/run.py --vs-015`` runs the same inside the main table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
PHASES = ["load", "first_run", "noop_rerun", "rerun_1pct_changed", "rerun_1pct_deleted"]
DIGESTS = ["digest_first_run", "digest_rerun_1pct_changed", "digest_rerun_1pct_deleted"]
LOAD_CHUNK_015 = 2_000  # 0.15 writes a chunk's metadata in one statement; SQLite caps its parameters


def worker(python: str, name: str, *args: Any) -> Dict[str, float]:
    """``workloads.<name>(*args)`` in a fresh ``python`` process."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import workloads; "
        "print('RESULT ' + json.dumps(workloads.WORKERS[sys.argv[2]](*json.loads(sys.argv[3]))))"
    )
    env = dict(os.environ)
    if python != sys.executable:  # 0.15's own interpreter: not this checkout's packages (PYTHONPATH)
        env.pop("PYTHONPATH", None)
    proc = subprocess.run([python, "-c", code, str(HERE), name, json.dumps(list(args))], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} {name}{args} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def check_is_015(python: str) -> str:
    """Raise unless ``python`` imports datapipe-core 0.15.0 from its own environment; return its location."""
    code = ("import importlib.metadata as m, sys, datapipe; "
            "print(m.version('datapipe-core'), datapipe.__file__.startswith(sys.prefix), datapipe.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    if out[:2] != ["0.15.0", "True"]:
        raise RuntimeError(f"{python} does not run datapipe-core 0.15.0 from its environment: {out}")
    return out[2]


def measure(python: str, url: str, n: int, chunk: int) -> Dict[str, float]:
    result: Dict[str, float] = {}
    result.update(worker(python, "dp_load", url, n, chunk, LOAD_CHUNK_015))
    result.update(worker(python, "dp_first_run", url, n, chunk))
    result.update(worker(python, "dp_reruns", url, n, chunk))
    return result


def same_output(ours: Dict[str, Any], old: Dict[str, Any]) -> bool:
    """Both wrote the same output content after the first run and the 1 % reruns (equal digests)."""
    return all(ours.get(d) is not None and ours.get(d) == old.get(d) for d in DIGESTS)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python015", required=True, help="an interpreter with datapipe-core==0.15.0 installed")
    p.add_argument("--sizes", default="10000")
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--chunk-size", type=int, default=1000)
    args = p.parse_args(argv)
    check_is_015(args.python015)
    tmp = tempfile.mkdtemp(prefix="datapipe-vs015-")
    server: Any = None
    rows: List[Tuple[str, int, str, float, float]] = []
    try:
        for kind in args.db.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                urls = []
                for impl in ("ours", "0.15"):
                    if kind == "postgres":
                        from datapipe.testing.services import PostgresServer, create_database

                        server = server or PostgresServer().start()
                        urls.append(create_database(server.url, prefix="vs015"))
                    else:
                        urls.append(f"sqlite:///{tmp}/{impl}_{n}.db")
                ours = measure(sys.executable, urls[0], n, args.chunk_size)
                old_url = urls[1].replace("postgresql+psycopg://", "postgresql+psycopg2://")  # 0.15's env has psycopg2
                old = measure(args.python015, old_url, n, args.chunk_size)
                if not same_output(ours, old):
                    raise AssertionError(f"{kind} N={n}: this Datapipe and 0.15 wrote different outputs")
                rows.extend((kind, n, phase, ours[phase], old[phase]) for phase in PHASES)
    finally:
        if server is not None:
            server.stop()
    print(f"{'db':9} {'N':>8} {'phase':22} {'ours s':>9} {'0.15 s':>9} {'faster':>8}")
    for kind, n, phase, ours_s, old_s in rows:
        print(f"{kind:9} {n:>8} {phase:22} {ours_s:9.3f} {old_s:9.3f} {old_s / max(ours_s, 1e-9):7.1f}x")
    print("outputs: both checked against the expected rows (count + digest) and equal to each other")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

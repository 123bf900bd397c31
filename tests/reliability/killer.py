"""Run the crash pipeline in child processes and SIGKILL them at chosen moments.

Children are forked from a ``forkserver`` that has already imported pandas, SQLAlchemy and
the pipeline, so a kill cycle costs the pipeline's work, not interpreter start-up. A child
reports ``("start", phase)`` when a step begins; the parent arms a timer when the target
phase starts and SIGKILLs the child after a random delay drawn from that phase's last
observed duration. The phase a kill landed in is the last phase the child reported.
The ``fault`` target installs ``datapipe.datatable.fault_hook`` in the child instead, which
kills the child between the data write and the metadata write of a random batch.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import crash_pipeline as cp

FAULT = "fault"
TARGETS = [*cp.STEPS, FAULT]

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["crash_pipeline"])


@dataclass
class ChildResult:
    exitcode: Optional[int]
    phase: str  # last phase the child reported ("startup" if none)
    fault: Optional[str] = None  # "after_data_write:<table>" when the fault hook fired
    done: bool = False
    durations: Dict[str, float] = field(default_factory=dict)

    @property
    def killed(self) -> bool:
        return self.exitcode == -9 and not self.done


def run_child(
    meta_url: str,
    version: int,
    records: int,
    redis_url: Optional[str] = None,
    target: Optional[str] = None,
    delay: float = 0.0,
    fault: Optional[Tuple[str, int]] = None,
    timeout: float = 600,
) -> ChildResult:
    """Run the pipeline once in a child; kill it ``delay`` s after ``target`` starts (if it does)."""
    parent, child = _ctx.Pipe(duplex=False)
    proc = _ctx.Process(target=cp.child_main, args=(child, meta_url, version, records, redis_url, fault))
    proc.start()
    child.close()
    result = ChildResult(exitcode=None, phase="startup")
    timer: Optional[threading.Timer] = None
    started_at = time.monotonic()
    try:
        while True:
            if not parent.poll(timeout):
                raise TimeoutError(f"child silent for {timeout}s in phase {result.phase}")
            try:
                kind, what = parent.recv()
            except EOFError:
                break
            now = time.monotonic()
            if kind in ("start", "done"):
                if result.phase != "startup":
                    result.durations[result.phase] = now - started_at
                started_at = now
            if kind == "start":
                result.phase = what
                if what == target and timer is None:
                    timer = threading.Timer(delay, proc.kill)
                    timer.start()
            elif kind == "fault":
                result.fault = what
            elif kind == "done":
                result.done = True
    finally:
        if timer is not None:
            timer.cancel()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        parent.close()
    result.exitcode = proc.exitcode
    return result


@dataclass
class KillStats:
    kills: Counter = field(default_factory=Counter)  # phase -> kills that landed there
    faults: Counter = field(default_factory=Counter)  # "after_data_write:<table>" -> count
    completed_runs: int = 0  # children that finished before the kill came
    versions: int = 0

    @property
    def total(self) -> int:
        return sum(self.kills.values())


def kill_loop(
    meta_url: str,
    records: int,
    kills: int,
    seed: int,
    redis_url: Optional[str] = None,
    write_ext=cp.write_ext,
) -> KillStats:
    """Kill the pipeline ``kills`` times, cycling through the targets; the input changes every cycle."""
    rng = random.Random(seed)
    stats = KillStats()
    est: Dict[str, float] = {t: 0.5 for t in cp.STEPS}
    version = 0
    targets: List[str] = []
    while stats.total < kills:
        if not targets:
            targets = list(TARGETS)
            rng.shuffle(targets)
        target = targets.pop()
        write_ext(meta_url, version, records)
        if target == FAULT:
            tables = [t for t in cp.WRITTEN_TABLES if redis_url or t != "out_redis"]
            res = run_child(meta_url, version, records, redis_url, fault=(rng.choice(tables), rng.randint(1, 3)))
        else:
            res = run_child(meta_url, version, records, redis_url, target, rng.uniform(0, est[target]))
        for phase, d in res.durations.items():
            est[phase] = d
        if res.exitcode not in (0, -9):
            raise AssertionError(f"child failed with exit code {res.exitcode} in phase {res.phase}")
        if res.killed:
            stats.kills[f"{FAULT}:{res.phase}" if res.fault else res.phase] += 1
            if res.fault:
                stats.faults[res.fault] += 1
        else:
            stats.completed_runs += 1
        version += 1
        stats.versions = version
        if version > 4 * kills:
            raise AssertionError(f"only {stats.total} kills landed in {version} runs: {stats}")
    return stats

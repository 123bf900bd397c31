"""Child-process code of ``test_concurrent_writers`` (writers and a looping runner, each its own process).

Every child gets the metadata URL and builds its own ``DBConn``/``DataStore`` (separate connections, as in
production). Children are synchronised with multiprocessing Events, Conditions and shared counters passed
as arguments; nothing here sleeps to synchronise. ``child_main`` wraps every child entry point and reports
``("ok", result)`` or ``("error", traceback)`` on a pipe.

Two pipelines:

* ``one``: ``inp(id, a)`` -> ``exclaim`` -> ``out(id, a)`` with ``a + "!"``;
* ``join``: ``left(id, a)`` + ``right(id, b)`` (outer, on ``id``) -> ``join_ab`` -> ``out(id, ab)``.

``Squeeze`` is the handshake that makes the gap between a writer's timestamp and its commit overlap a
batch deterministically: the runner's function (which runs after the batch has read its inputs) lets the
writer take its timestamp, the *next* batch (which therefore starts after that timestamp) reads the old
inputs, and only then does the writer commit. This is the window of a writer whose transaction is slow or
waits for a lock; on today's engine the key then looks processed (``process_ts`` newer than ``update_ts``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, ComputeStep, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore, DataTable
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

WAIT = 20.0  # upper bound of every handshake wait (a bug must not hang the suite)
StepFunc = Callable[..., pd.DataFrame]


# ---------------------------------------------------------------- the pipelines


def exclaim(df: pd.DataFrame) -> pd.DataFrame:
    """The 1-to-1 step: ``a`` gets an exclamation mark."""
    return df.assign(a=df["a"] + "!")


def join_ab(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """The join step: outer join on ``id``, ``ab = a + "|" + b`` (a missing side is "")."""
    both = pd.merge(left[["id", "a"]], right[["id", "b"]], on="id", how="outer")
    return pd.DataFrame({"id": both["id"].astype(int), "ab": both["a"].fillna("") + "|" + both["b"].fillna("")})


PIPELINES: Dict[str, Tuple[Dict[str, str], List[str], str, StepFunc]] = {
    # kind -> (table -> value column, input tables, step name, function)
    "one": ({"inp": "a", "out": "a"}, ["inp"], "exclaim", exclaim),
    "join": ({"left": "a", "right": "b", "out": "ab"}, ["left", "right"], "join_ab", join_ab),
}


def build(
    url: str, kind: str = "one", chunk_size: int = 1000, func: Optional[StepFunc] = None
) -> Tuple[DataStore, List[ComputeStep]]:
    """A fresh ``DBConn``/``DataStore`` on ``url`` and the steps of pipeline ``kind`` (tables in the same DB)."""
    tables, inputs, name, default_func = PIPELINES[kind]
    con = DBConn(url)
    ds = DataStore(con, create_meta_table=True)
    catalog = Catalog(
        {
            t: Table(TableStoreDB(con, t, [Column("id", Integer, primary_key=True), Column(col, String)], True))
            for t, col in tables.items()
        }
    )
    step = BatchTransform(func or default_func, inputs, ["out"], chunk_size=chunk_size, name=name)
    return ds, build_compute(ds, catalog, Pipeline([step]))


def expected_output(ds: DataStore, kind: str) -> pd.DataFrame:
    """The step's function applied to the current (final) inputs."""
    _, inputs, _, func = PIPELINES[kind]
    return func(*[ds.get_table(t).get_data() for t in inputs])


def rows(ids: Any, fmt: str, col: str = "a") -> pd.DataFrame:
    """A frame ``id, <col>`` with values ``fmt.format(id)``."""
    ids = [int(i) for i in ids]
    return pd.DataFrame({"id": ids, col: [fmt.format(i) for i in ids]})


class ConflictRetries(logging.Handler):
    """Counts the transactions the framework ran again after PostgreSQL aborted them (deadlock victims,
    ``DBConn.retrying_conflicts``); a writer reports the count, the framework hides the aborts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        logging.getLogger("datapipe.sql").addHandler(self)
        logging.getLogger("datapipe.sql").setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if "aborted by the database" in record.getMessage():
            self.count += 1


# ---------------------------------------------------------------- synchronisation objects


@dataclass
class RunCounter:
    """Runs started/finished by the runner; lets a writer wait for a whole run that starts after now."""

    started: Any  # multiprocessing Value("i")
    finished: Any  # multiprocessing Value("i")
    cond: Any  # multiprocessing Condition

    @classmethod
    def create(cls, ctx: Any) -> RunCounter:
        return cls(ctx.Value("i", 0), ctx.Value("i", 0), ctx.Condition())

    def wait_run_after_now(self, timeout: float = WAIT) -> bool:
        """Block until a run that starts after this call has completed; False on timeout."""
        with self.cond:
            target = self.started.value + 1
            return bool(self.cond.wait_for(lambda: self.finished.value >= target, timeout))

    def begin(self) -> None:
        with self.cond:
            self.started.value += 1

    def end(self) -> None:
        with self.cond:
            self.finished.value += 1
            self.cond.notify_all()


@dataclass
class Squeeze:
    """Handshake runner function <-> writer (see the module docstring)."""

    ready: Any  # writer -> runner: I have a change to make
    stamp_now: Any  # runner (in batch N) -> writer: take your timestamp
    stamped: Any  # writer -> runner: done
    batch_read: Any  # runner (in batch N+1, inputs already read) -> writer: commit now
    committed: Any  # writer -> runner

    @classmethod
    def create(cls, ctx: Any) -> Squeeze:
        return cls(*(ctx.Event() for _ in range(5)))

    def gate(self, func: StepFunc) -> StepFunc:
        """Wrap the step function of the runner with the runner's half of the handshake."""
        state = {"requested": False}

        def gated(*frames: pd.DataFrame) -> pd.DataFrame:
            if state["requested"]:  # this batch started after the writer's timestamp and has read its inputs
                state["requested"] = False
                self.batch_read.set()
                self.committed.wait(WAIT)
                self.committed.clear()
            elif self.ready.is_set():
                self.ready.clear()
                self.stamp_now.set()
                state["requested"] = self.stamped.wait(WAIT)
                self.stamped.clear()
            return func(*frames)

        gated.__name__ = getattr(func, "__name__", "gated")
        return gated

    def write(self, dbconn: DBConn, write: Callable[[Optional[float]], None], stop: Any) -> bool:
        """The writer's half: ``write(now)`` lands between a batch's start and its store; False if no batch came.

        PostgreSQL: the write happens inside a transaction opened before the batch starts and committed after
        the batch read its inputs (``now`` None: the engine stamps it). SQLite serialises writers, so holding
        the write lock would block the runner: the writer takes its timestamp (``now``) first, as
        ``store_chunk`` does before it waits for the lock, and writes after the batch read its inputs.
        """
        self.ready.set()
        while not self.stamp_now.wait(0.2):
            if stop.is_set():
                self.ready.clear()
                return False
        self.stamp_now.clear()
        if dbconn.is_sqlite:
            now = time.time()
            self.stamped.set()
            self.batch_read.wait(WAIT)
            self.batch_read.clear()
            with dbconn.transaction():
                write(now)
        else:
            first = [True]

            def held() -> None:
                with dbconn.transaction():
                    write(None)
                    if first[0]:  # not again when run again after a deadlock
                        first[0] = False
                        self.stamped.set()
                        self.batch_read.wait(WAIT)
                        self.batch_read.clear()

            dbconn.retrying_conflicts(held)
        self.committed.set()
        return True


# ---------------------------------------------------------------- child entry points


def child_main(conn: Any, target: str, kwargs: Dict[str, Any]) -> None:
    """Run ``globals()[target](**kwargs)`` and report its result or traceback on ``conn``."""
    try:
        result = globals()[target](**kwargs)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", result))
    conn.close()


def skew_clock(seconds: float) -> None:
    """Shift this process's ``time.time()`` by ``seconds`` (every ``time.time()`` call in datapipe sees it)."""
    if seconds:
        real = time.time
        time.time = lambda: real() + seconds  # type: ignore[assignment]


def runner_loop(
    url: str,
    stop: Any,
    counter: RunCounter,
    kind: str = "one",
    chunk_size: int = 1000,
    squeeze: Optional[Squeeze] = None,
    executor: Optional[str] = None,
) -> int:
    """``run_steps`` in a loop until ``stop`` is set; returns the number of runs."""
    ex = None
    if executor == "ray":  # a local 2-CPU Ray started by this process; its workers import this module
        from datapipe.executor.ray import RayExecutor

        here = os.path.dirname(os.path.abspath(__file__))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))

        ex = RayExecutor(init_kwargs={"num_cpus": 2, "log_to_driver": False, "configure_logging": False})
    func = squeeze.gate(PIPELINES[kind][3]) if squeeze is not None else None
    ds, steps = build(url, kind, chunk_size, func)
    while not stop.is_set():
        counter.begin()
        run_steps(ds, steps, executor=ex)
        counter.end()
    return counter.finished.value


def table(url: str, name: str, kind: str = "one") -> Tuple[DBConn, DataTable]:
    ds, _ = build(url, kind)
    return ds.meta_dbconn, ds.get_table(name)


def big_chunk(url: str, n: int, ready: Any, counter: RunCounter) -> Dict[str, Any]:
    """One ``store_chunk`` of ``n`` new rows once the runner is looping; reports how many runs overlapped it."""
    _, dt = table(url, "inp")
    df = rows(range(1_000_000, 1_000_000 + n), "big{}")
    ready.wait(WAIT)
    before = counter.finished.value
    dt.store_chunk(df)
    return {"runs_during": counter.finished.value - before}


def random_writer(
    url: str, seed: int, chunks: int, key_range: Tuple[int, int], go: Any, tag: str, kind: str = "one",
    table_name: str = "inp", min_rows: int = 50, max_rows: int = 500,
) -> Dict[str, int]:
    """Inserts, updates and deletions (``delete_by_idx``) of random keys of ``key_range``, many small chunks."""
    _, dt = table(url, table_name, kind)
    col = PIPELINES[kind][0][table_name]
    rng = random.Random(seed)
    lo, hi = key_range
    go.wait(WAIT)
    stats = {"stored": 0, "deleted": 0}
    retries = ConflictRetries()
    for i in range(chunks):
        ids = rng.sample(range(lo, hi), rng.randint(min_rows, max_rows))  # unsorted: Datapipe orders the locks
        delete = rng.random() < 0.2
        if delete:
            dt.delete_by_idx(pd.DataFrame({"id": ids}))
        else:
            dt.store_chunk(rows(ids, f"{tag}-{i}-{{}}", col))
        stats["deleted" if delete else "stored"] += len(ids)
    return {**stats, "conflict_retries": retries.count}


def trickle(url: str, go: Any, stop: Any) -> int:
    """After ``go``, commit small chunks of new keys (ingestion going on) until ``stop``; returns the count."""
    _, dt = table(url, "inp")
    go.wait(WAIT)
    n = 0
    while not stop.is_set():
        dt.store_chunk(rows(range(2_000_000 + 10 * n, 2_000_000 + 10 * n + 10), "t{}"))
        n += 1
    return n


def held_transaction(
    url: str, n: int, holding: Any, other_done: Optional[Any], counter: RunCounter, other_wait: float
) -> Dict[str, bool]:
    """Store ``n`` new rows in a transaction kept open until a whole run started after the store completed.

    With ``other_done``, also wait (up to ``other_wait`` s) for another writer's commit first. On SQLite
    that writer and the runner's writes block on our lock, so the waits end by timeout there.
    """
    dbconn, dt = table(url, "inp")
    with dbconn.transaction():
        dt.store_chunk(rows(range(500_000, 500_000 + n), "held{}"))
        holding.set()
        other = other_done.wait(other_wait) if other_done is not None else True
        run = counter.wait_run_after_now(other_wait)
    return {"other_committed_first": bool(other), "run_during_tx": run}


def small_commit(url: str, n: int, go: Any, done: Any) -> None:
    """After ``go``, commit ``n`` new rows; then set ``done``."""
    _, dt = table(url, "inp")
    go.wait(WAIT)
    dt.store_chunk(rows(range(600_000, 600_000 + n), "small{}"))
    done.set()


def skewed_writer(url: str, skew: float, df: pd.DataFrame, go: Any) -> float:
    """With this process's clock shifted by ``skew`` s, store ``df`` after ``go``; return the measured skew."""
    real = time.time
    skew_clock(skew)
    _, dt = table(url, "inp")
    go.wait(WAIT)
    t0 = real()
    dt.store_chunk(df)
    t1 = real()
    update_ts = dt.get_metadata(df[["id"]])["update_ts"]
    return float(update_ts.max() - (t0 + t1) / 2)  # how far the stored update_ts is from the real clock


def same_now_twice(url: str, n: int, counter: RunCounter) -> bool:
    """Two ``store_chunk(df, now=T)`` with the same ``T`` and a whole run between them."""
    _, dt = table(url, "inp")
    now = time.time()
    dt.store_chunk(rows(range(700_000, 700_000 + n), "first{}"), now=now)
    ran = counter.wait_run_after_now()
    dt.store_chunk(rows(range(800_000, 800_000 + n), "second{}"), now=now)
    return ran


def squeezed_writer(
    url: str, squeeze: Squeeze, stop: Any, rounds: int, mode: str, keys: int, kind: str = "one"
) -> int:
    """``rounds`` squeezed writes (see ``Squeeze``); returns how many happened before ``stop``.

    ``mode``: ``restore`` puts back the original ``a{id}`` of every key; ``delete`` deletes every 5th key
    (a different fifth each round) and re-inserts half of the previous round's deleted keys with new values;
    ``right`` rewrites ``right.b`` of every key.
    """
    name = "right" if mode == "right" else "inp"
    dbconn, dt = table(url, name, kind)
    done = 0
    for r in range(rounds):
        if mode == "restore":
            df = rows(range(keys), "a{}")

            def write(now: Optional[float], df: pd.DataFrame = df) -> None:
                dt.store_chunk(df, now=now)

        elif mode == "delete":
            idx = pd.DataFrame({"id": [i for i in range(keys) if i % 5 == r % 5]})
            back = rows([i for i in range(keys) if i % 5 == (r - 1) % 5 and i % 2 == 0], f"back{r}-{{}}") if r else None

            def write(now: Optional[float], idx: pd.DataFrame = idx, back: Optional[pd.DataFrame] = back) -> None:
                dt.delete_by_idx(idx, now=now)
                if back is not None:
                    dt.store_chunk(back, now=now)

        else:
            df = rows(range(keys), f"r{r}-{{}}", "b")

            def write(now: Optional[float], df: pd.DataFrame = df) -> None:
                dt.store_chunk(df, now=now)

        if not squeeze.write(dbconn, write, stop):
            break
        done += 1
    return done


def churn(url: str, keys: int, chunk: int, passes: int, fmt: str, kind: str = "one", table_name: str = "inp") -> int:
    """Rewrite every key, ``chunk`` keys per commit, ``passes`` times (values ``fmt`` with pass and id)."""
    _, dt = table(url, table_name, kind)
    col = PIPELINES[kind][0][table_name]
    n = 0
    for p in range(passes):
        for lo in range(0, keys, chunk):
            df = rows(range(lo, min(lo + chunk, keys)), fmt.replace("{p}", str(p)), col)
            dt.store_chunk(df)
            n += 1
    return n


# ---------------------------------------------------------------- parent side: processes and the final check

_ctx = multiprocessing.get_context("forkserver")  # the context (and forkserver) of killer.py, when both are used
JOIN_TIMEOUT = 300.0


class Child:
    """A child process running ``writers.<target>(**kwargs)`` through ``child_main``."""

    started: List[Child] = []  # every child of the current test, killed at its end if still alive

    def __init__(self, target: str, **kwargs: Any) -> None:
        self.target = target
        self.conn, child_conn = _ctx.Pipe(duplex=False)
        self.proc = _ctx.Process(target=child_main, args=(child_conn, target, kwargs))
        self.proc.start()
        child_conn.close()
        Child.started.append(self)

    def result(self, timeout: float = JOIN_TIMEOUT) -> Any:
        """Wait for the child; its return value, or an AssertionError with its traceback."""
        if not self.conn.poll(timeout):
            self.proc.kill()
            self.proc.join()
            raise AssertionError(f"{self.target}: no result after {timeout}s")
        status, value = self.conn.recv()
        self.proc.join(timeout)
        assert status == "ok", f"{self.target} failed:\n{value}"
        return value


def kill_leftover_children() -> None:
    """Kill (by process object) the children of this test that are still alive, e.g. after a failure."""
    for child in Child.started:
        if child.proc.is_alive():
            child.proc.kill()
            child.proc.join()
    Child.started.clear()


@contextmanager
def looping_runner(
    url: str,
    kind: str = "one",
    chunk_size: int = 1000,
    squeeze: Optional[Squeeze] = None,
    executor: Optional[str] = None,
) -> Iterator[RunCounter]:
    """A runner process looping ``run_steps`` until the block ends; yields once its first run completed."""
    stop = _ctx.Event()
    counter = RunCounter.create(_ctx)
    runner = Child("runner_loop", url=url, stop=stop, counter=counter, kind=kind, chunk_size=chunk_size,
                   squeeze=squeeze, executor=executor)
    try:
        assert counter.wait_run_after_now(180), "the runner did not complete a first run"
        yield counter
    finally:
        stop.set()
    assert runner.result() >= 1


@dataclass
class Outcome:
    """What the final check found: output rows missing / stale / extra, and pending keys per step."""

    missing: int
    stale: int
    extra: int
    pending: Dict[str, int]
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.missing == self.stale == self.extra == 0 and not any(self.pending.values())

    def __str__(self) -> str:
        text = f"missing={self.missing} stale={self.stale} extra={self.extra} pending={self.pending}"
        return f"{text} {self.note}".rstrip()


def final_check(url: str, kind: str = "one") -> Outcome:
    """One more run on a fresh connection, then compare the output with the function of the final inputs."""
    ds, steps = build(url, kind)
    run_steps(ds, steps)
    col = PIPELINES[kind][0]["out"]
    actual = ds.get_table("out").get_data()[["id", col]]
    expected = expected_output(ds, kind)[["id", col]]
    both = pd.merge(expected, actual, on="id", how="outer", suffixes=("_exp", "_act"), indicator=True)
    in_both = both[both["_merge"] == "both"]
    outcome = Outcome(
        missing=int((both["_merge"] == "left_only").sum()),
        extra=int((both["_merge"] == "right_only").sum()),
        stale=int((in_both[f"{col}_exp"] != in_both[f"{col}_act"]).sum()),
        pending={s.name: s.get_status(ds).changed_idx_count for s in steps},
    )
    if outcome.ok:  # the counts say equal; the full frames must be too
        pd.testing.assert_frame_equal(
            actual.sort_values("id").reset_index(drop=True),
            expected.sort_values("id").reset_index(drop=True),
            check_dtype=False,
        )
    ds.meta_dbconn.con.dispose()
    return outcome


def repeat(meta_url_factory: Callable[[], str], scenario: Callable[[str], str], reps: int, kind: str = "one") -> None:
    """Run ``scenario(url)`` on ``reps`` fresh databases, final-check each, assert that all held up."""
    outcomes: List[Outcome] = []
    url = ""
    for _ in range(reps):
        url = meta_url_factory()
        ds, _steps = build(url, kind)  # tables exist before any child starts
        ds.meta_dbconn.con.dispose()
        note = scenario(url)
        outcome = final_check(url, kind)
        outcome.note = note
        outcomes.append(outcome)
    db = "sqlite" if url.startswith("sqlite") else "postgres"
    report = "\n".join(f"  rep {i} [{db}]: {o}" for i, o in enumerate(outcomes))
    print(f"\nCONCURRENT-WRITERS {db}\n{report}")
    assert all(o.ok for o in outcomes), f"output differs from f(final input) or keys left pending:\n{report}"


def fill(url: str, n: int, fmt: str = "a{}", kind: str = "one", table: str = "inp") -> None:
    """Commit ``n`` initial rows and process them (one run), so later writes are updates of processed keys."""
    ds, steps = build(url, kind)
    ds.get_table(table).store_chunk(rows(range(n), fmt, PIPELINES[kind][0][table]))
    run_steps(ds, steps)
    ds.meta_dbconn.con.dispose()

"""Writers overlapping pipeline runs (SPEC section 5, "Concurrency contract").

Writers and a looping runner are separate processes (``writers.py``, started through the forkserver of
``killer``), each with its own connections. After the writers stop and the runner is told to stop, the test
process runs the pipeline once more on a fresh ``DBConn`` and checks that

* the output equals the step's function applied to the final inputs, row for row (missing / extra / stale
  rows are counted: stale = key in both with a different value), and
* no step reports pending keys (``changed_idx_count == 0``).

Every scenario is repeated ``REPS`` times on fresh databases, on SQLite and PostgreSQL; the assertion
message lists the counts of every repetition. The input tables themselves are the truth: the test never
predicts the winner of a race.
"""

from __future__ import annotations

import os
from typing import Iterator

import pandas as pd
import pytest
import writers as w
from killer import _ctx
from writers import Child, fill, looping_runner

from datapipe.compute import run_steps

REPS = int(os.environ.get("CONCURRENT_REPS", "3"))
BIG = int(os.environ.get("CONCURRENT_BIG_ROWS", "200000"))

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    """A failed test must not leave its writers behind (waiting for events nobody will set)."""
    yield
    w.kill_leftover_children()


# ---------------------------------------------------------------- 1. one large chunk


def test_large_chunk_stored_while_runner_loops(meta_url_factory):
    """One ``store_chunk`` of 200 000 new rows committed while runs go on: every row reaches the output.

    Ingestion of small chunks goes on meanwhile (a second writer), so runs see commits newer than the
    big chunk's timestamp before the big chunk commits.
    """

    def scenario(url: str) -> str:
        fill(url, 1000)
        ready, stop = _ctx.Event(), _ctx.Event()
        with looping_runner(url) as counter:
            writer = Child("big_chunk", url=url, n=BIG, ready=ready, counter=counter)
            small = Child("trickle", url=url, go=ready, stop=stop)
            ready.set()
            runs = writer.result()["runs_during"]
            stop.set()
            n_small = small.result()
        return f"(runs during the store: {runs}, small commits: {n_small})"

    w.repeat(meta_url_factory, scenario, REPS)


# ---------------------------------------------------------------- 2. several writers


@pytest.mark.parametrize("n_writers", [2, 4])
def test_overlapping_writers_while_runner_loops(meta_url_factory, n_writers):
    """2 / 4 writers insert, update and delete overlapping keys in many small chunks during runs."""
    chunks = 240 // n_writers

    def scenario(url: str) -> str:
        fill(url, 2000)
        go = _ctx.Event()
        with looping_runner(url, chunk_size=200):
            children = [
                Child("random_writer", url=url, seed=100 * n_writers + i, chunks=chunks,
                      key_range=(i * 300, i * 300 + 2000), go=go, tag=f"w{i}", min_rows=50, max_rows=300)
                for i in range(n_writers)
            ]
            go.set()
            stats = [c.result() for c in children]
        return f"(writers: {stats})"

    w.repeat(meta_url_factory, scenario, REPS)


# ---------------------------------------------------------------- 3. transactions held open


def test_transaction_held_open_across_a_run(meta_url_factory):
    """A writer keeps its transaction open (after ``store_chunk``) until a whole run has happened, then commits."""

    def scenario(url: str) -> str:
        fill(url, 500)
        sqlite = url.startswith("sqlite")
        holding = _ctx.Event()
        with looping_runner(url) as counter:
            writer = Child("held_transaction", url=url, n=100, holding=holding, other_done=None, counter=counter,
                           other_wait=1.5 if sqlite else w.WAIT)
            res = writer.result()
        if not sqlite:  # PostgreSQL does not serialise writers: the run must really have overlapped
            assert res["run_during_tx"], res
        return f"({res})"

    w.repeat(meta_url_factory, scenario, REPS)


def test_transaction_held_open_while_another_writer_commits(meta_url_factory):
    """As above, while a second writer commits a small chunk (newer timestamp) and a run sees it."""

    def scenario(url: str) -> str:
        fill(url, 500)
        sqlite = url.startswith("sqlite")
        holding, done = _ctx.Event(), _ctx.Event()
        with looping_runner(url) as counter:
            held = Child("held_transaction", url=url, n=100, holding=holding, other_done=done, counter=counter,
                         other_wait=1.5 if sqlite else w.WAIT)
            other = Child("small_commit", url=url, n=10, go=holding, done=done)
            res = held.result()
            other.result()
        if not sqlite:
            assert res == {"other_committed_first": True, "run_during_tx": True}, res
        return f"({res})"

    w.repeat(meta_url_factory, scenario, REPS)


# ---------------------------------------------------------------- 4. clocks


def test_writers_with_skewed_clocks(meta_url_factory):
    """A writer 5 s ahead commits and a run follows; then a writer 5 s behind inserts and updates."""

    def scenario(url: str) -> str:
        fill(url, 500)
        go_ahead, go_behind = _ctx.Event(), _ctx.Event()
        ahead = Child("skewed_writer", url=url, skew=5.0, df=w.rows(range(1000, 1100), "ahead{}"), go=go_ahead)
        behind_df = pd.concat([w.rows(range(1100, 1200), "behind{}"), w.rows(range(1000, 1050), "behind{}")])
        behind = Child("skewed_writer", url=url, skew=-5.0, df=behind_df, go=go_behind)
        with looping_runner(url) as counter:
            go_ahead.set()
            skew_ahead = ahead.result()
            assert counter.wait_run_after_now()
            go_behind.set()
            skew_behind = behind.result()
            assert counter.wait_run_after_now()
        # the patched clocks really reached the metadata
        assert 4.0 < skew_ahead < 6.0 and -6.0 < skew_behind < -4.0, (skew_ahead, skew_behind)
        return f"(update_ts skew {skew_ahead:+.2f}s / {skew_behind:+.2f}s)"

    w.repeat(meta_url_factory, scenario, REPS)


def test_same_timestamp_twice_with_a_run_between(meta_url_factory):
    """``store_chunk(df, now=T)`` twice with the same ``T`` (new keys each time) and a whole run in between."""

    def scenario(url: str) -> str:
        fill(url, 500)
        with looping_runner(url) as counter:
            assert Child("same_now_twice", url=url, n=100, counter=counter).result()
        return ""

    w.repeat(meta_url_factory, scenario, REPS)


# ---------------------------------------------------------------- 5. restores and deletions


def _squeezed(url: str, mode: str, keys: int, rounds: int, churn_fmt: str, kind: str = "one",
              churn_table: str = "inp", passes: int = 1) -> str:
    """Churn (plain commits that keep batches coming) plus a squeezed writer, under a looping runner."""
    squeeze, stop = w.Squeeze.create(_ctx), _ctx.Event()
    with looping_runner(url, kind=kind, chunk_size=50, squeeze=squeeze):
        writer = Child("squeezed_writer", url=url, squeeze=squeeze, stop=stop, rounds=rounds, mode=mode,
                       keys=keys, kind=kind)
        assert squeeze.ready.wait(w.WAIT), "the squeezed writer did not start"
        churner = Child("churn", url=url, keys=keys, chunk=50, passes=passes, fmt=churn_fmt, kind=kind,
                        table_name=churn_table)
        churner.result()
        stop.set()
        done = writer.result()
    return f"(squeezed writes: {done}/{rounds})"


def test_restore_of_an_earlier_value_during_a_run(meta_url_factory):
    """a -> b (processed), then b -> a (the hash of a row processed long ago) lands while a batch runs."""

    def scenario(url: str) -> str:
        fill(url, 1000, "a{}")
        return _squeezed(url, "restore", keys=1000, rounds=4, churn_fmt="b{p}-{}")

    w.repeat(meta_url_factory, scenario, REPS)


def test_deletions_and_reinserts_racing_runs(meta_url_factory):
    """Deletions (``delete_by_idx``) and re-inserts of deleted keys land while batches run."""

    def scenario(url: str) -> str:
        fill(url, 1000, "a{}")
        return _squeezed(url, "delete", keys=1000, rounds=4, churn_fmt="c{p}-{}")

    w.repeat(meta_url_factory, scenario, REPS)


# ---------------------------------------------------------------- 6. join


def test_join_input_written_while_other_input_is_processed(meta_url_factory):
    """``right`` is rewritten while the runner processes batches triggered by changes of ``left``."""

    def scenario(url: str) -> str:
        ds, steps = w.build(url, "join")
        ds.get_table("left").store_chunk(w.rows(range(1000), "l{}"))
        ds.get_table("right").store_chunk(w.rows(range(0, 1000, 2), "r{}", "b"))  # odd keys: left only
        run_steps(ds, steps)
        ds.meta_dbconn.con.dispose()
        return _squeezed(url, "right", keys=1000, rounds=4, churn_fmt="l{p}-{}", kind="join", churn_table="left")

    w.repeat(meta_url_factory, scenario, REPS, kind="join")

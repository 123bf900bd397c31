"""Two runners of the same pipeline at once: per-step run locks (``datapipe.meta.locks``)."""

from __future__ import annotations

import os
import signal
from typing import Any, List, Tuple

import crash_pipeline as cp
import lock_children
import pandas as pd
import pytest
from compare import compare_pipelines
from conftest import RECORDS
from killer import _ctx, run_child

from datapipe.meta.locks import StepLockedError, step_lock
from datapipe.store.database import DBConn
from datapipe.testing import assert_datatable_equal


def _expect(conn: Any, kind: str) -> List[Tuple[str, Any]]:
    """Messages received until one of ``kind`` arrives (included)."""
    seen = []
    while True:
        msg = conn.recv()
        seen.append(msg)
        if msg[0] == kind:
            return seen


def _drain(conn: Any) -> List[Tuple[str, Any]]:
    seen = []
    while True:
        try:
            seen.append(conn.recv())
        except EOFError:
            return seen


def _start(meta_url: str, mode: str, gate: Any = None):
    parent, child = _ctx.Pipe(duplex=False)
    proc = _ctx.Process(target=lock_children.runner, args=(child, meta_url, mode, gate))
    proc.start()
    child.close()
    return proc, parent


def _rows(messages: List[Tuple[str, Any]]) -> int:
    return sum(n for kind, n in messages if kind == "rows")


def _expected_out() -> pd.DataFrame:
    return pd.DataFrame({"id": range(lock_children.KEYS), "a": [f"x{i}!" for i in range(lock_children.KEYS)]})


# ---------------------------------------------------------------- the lock itself


def test_second_holder_is_refused_then_admitted_after_release(dbconn):
    other = DBConn(dbconn.connstr)  # a second connection pool, as another process would have
    with step_lock(dbconn, "step_a", mode="fail"):
        with pytest.raises(StepLockedError, match="step 'step_a' is already being run by another process"):
            with step_lock(other, "step_a", mode="fail"):
                pass
        with step_lock(other, "step_b", mode="fail"):  # other steps are not affected
            pass
    with step_lock(other, "step_a", mode="fail"):
        pass
    other.con.dispose()


def test_wait_mode_gives_up_after_timeout(dbconn, monkeypatch):
    monkeypatch.setenv("DATAPIPE_STEP_LOCK_TIMEOUT", "0.3")
    other = DBConn(dbconn.connstr)
    with step_lock(dbconn, "step_a", mode="fail"):
        with pytest.raises(StepLockedError, match="gave up after waiting 0.3s"):
            with step_lock(other, "step_a", mode="wait"):
                pass
    other.con.dispose()


def _hold_lock_forever(conn: Any, url: str) -> None:
    with step_lock(DBConn(url), "step_a", mode="fail"):
        conn.send("locked")
        signal.pause()


def test_lock_of_a_killed_runner_is_released(dbconn):
    parent, child = _ctx.Pipe(duplex=False)
    proc = _ctx.Process(target=_hold_lock_forever, args=(child, dbconn.connstr))
    proc.start()
    child.close()
    assert parent.recv() == "locked"
    with pytest.raises(StepLockedError):
        with step_lock(dbconn, "step_a", mode="fail"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with step_lock(dbconn, "step_a", mode="wait"):  # would block forever if the lock survived its owner
        pass


# ---------------------------------------------------------------- two runner processes


def test_second_runner_waits_for_the_first(dbconn):
    url = dbconn.connstr
    lock_children.fill(url)
    gate = _ctx.Event()
    first, first_conn = _start(url, "wait", gate)
    first_msgs = _expect(first_conn, "inside")  # the first runner holds the step lock, mid-batch
    second, second_conn = _start(url, "wait")
    second_msgs = _expect(second_conn, "waiting")
    assert "slow_step" in second_msgs[-1][1]
    gate.set()
    first_msgs += _drain(first_conn)
    second_msgs += _drain(second_conn)
    first.join()
    second.join()
    assert (first.exitcode, second.exitcode) == (0, 0), (first_msgs, second_msgs)
    # every key was processed exactly once, by the first runner; the second found nothing left
    assert _rows(first_msgs) == lock_children.KEYS
    assert _rows(second_msgs) == 0
    ds, steps = lock_children.build(url, lambda df: df)
    assert_datatable_equal(ds.get_table("out"), _expected_out())
    assert steps[0].meta.get_counts() == {"processed": lock_children.KEYS, "failed": 0}


def test_second_runner_is_refused_in_fail_mode(dbconn):
    url = dbconn.connstr
    lock_children.fill(url)
    gate = _ctx.Event()
    first, first_conn = _start(url, "wait", gate)
    _expect(first_conn, "inside")
    second, second_conn = _start(url, "fail")
    second_msgs = _drain(second_conn)
    second.join()
    assert second.exitcode == 3
    errors = [m for kind, m in second_msgs if kind == "error"]
    assert len(errors) == 1
    assert errors[0].startswith("StepLockedError: step 'slow_step' is already being run by another process")
    assert "DATAPIPE_STEP_LOCK=fail" in errors[0]
    assert _rows(second_msgs) == 0
    gate.set()
    first_msgs = _drain(first_conn)
    first.join()
    assert first.exitcode == 0
    assert _rows(first_msgs) == lock_children.KEYS
    ds, steps = lock_children.build(url, lambda df: df)
    assert_datatable_equal(ds.get_table("out"), _expected_out())
    assert steps[0].meta.get_counts() == {"processed": lock_children.KEYS, "failed": 0}


def test_two_full_pipeline_runners_at_once_equal_one_run(meta_url_factory):
    """The crash-test pipeline (generate, external table, 4 transforms) run by two processes at once."""
    shared, reference = meta_url_factory(), meta_url_factory()
    for url in (shared, reference):
        cp.write_ext(url, 0, RECORDS)
    # both runners start together; the step locks serialise each step, not the whole pipeline
    procs = [_start_pipeline(shared) for _ in range(2)]
    results = [_finish_pipeline(p, c) for p, c in procs]
    assert all(r == 0 for r in results), results
    assert run_child(reference, 0, RECORDS).done
    comparison = compare_pipelines(cp.build(shared, 0, RECORDS), cp.build(reference, 0, RECORDS))
    assert comparison.total == 0, comparison


def _start_pipeline(url: str):
    parent, child = _ctx.Pipe(duplex=False)
    proc = _ctx.Process(target=cp.child_main, args=(child, url, 0, RECORDS, None, None))
    proc.start()
    child.close()
    return proc, parent


def _finish_pipeline(proc: Any, conn: Any) -> int:
    _drain(conn)
    proc.join()
    return proc.exitcode

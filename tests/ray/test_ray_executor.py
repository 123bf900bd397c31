"""RayExecutor on a local 2-CPU Ray: results and metadata equal the single-thread run.

Each test builds the same pipeline twice in one database (table prefixes ``st`` and ``ray``),
applies the same input changes to both, runs one with ``SingleThreadExecutor`` and the other with
``RayExecutor`` (parallelism 3, so several batches are in flight), and compares data and metadata
(timestamps aside) after every run. Runs on SQLite and PostgreSQL (``dbconn``), and the tests of
results and failures run with both ``writes="driver"`` (workers compute, the driver commits) and
``writes="workers"`` (each task writes its batch).
"""

import re
from typing import Any, Dict, List

import pandas as pd
import pytest
import ray_pipelines as rp
from sqlalchemy import event

from datapipe.compute import run_steps
from datapipe.datatable import DataStore
from datapipe.executor import BatchProcessor, ExecutorConfig, SingleThreadExecutor
from datapipe.executor.ray import RayExecutor
from datapipe.progress import RunStats
from datapipe.run_config import RunConfig

pytestmark = pytest.mark.timeout(300)


def _sorted(df: pd.DataFrame, cols: List[str]) -> pd.DataFrame:
    return df[cols].sort_values("id").reset_index(drop=True)


class Twin:
    """The same pipeline under two prefixes in one DataStore."""

    def __init__(self, dbconn: Any, writes: str = "auto") -> None:
        self.ds = DataStore(dbconn, create_meta_table=True)
        self.st = rp.build(self.ds, dbconn, "st")
        self.ray = rp.build(self.ds, dbconn, "ray")
        self.writes = writes

    def table(self, side: Dict[str, Any], name: str):
        return self.ds.get_table(side["tables"][name])

    def store(self, df: pd.DataFrame) -> None:
        for side in (self.st, self.ray):
            self.table(side, "inp").store_chunk(df)

    def delete(self, ids: List[int]) -> None:
        for side in (self.st, self.ray):
            self.table(side, "inp").delete_by_idx(pd.DataFrame({"id": ids}))

    def run(self, run_config: RunConfig = None) -> None:
        run_steps(self.ds, self.st["steps"], run_config, executor=SingleThreadExecutor())
        run_steps(self.ds, self.ray["steps"], run_config, executor=RayExecutor(writes=self.writes))

    def assert_equal(self) -> None:
        for name in ("out", "even", "odd"):
            st, ry = self.table(self.st, name), self.table(self.ray, name)
            pd.testing.assert_frame_equal(_sorted(st.get_data(), ["id", "a"]), _sorted(ry.get_data(), ["id", "a"]))
            meta_cols = ["id", "hash", "deleted"]
            st_meta = st.get_metadata().assign(deleted=lambda m: m["delete_ts"].notna())
            ry_meta = ry.get_metadata().assign(deleted=lambda m: m["delete_ts"].notna())
            pd.testing.assert_frame_equal(_sorted(st_meta, meta_cols), _sorted(ry_meta, meta_cols))
        for st_step, ry_step in zip(self.st["steps"], self.ray["steps"]):
            cols = ["id", "is_success", "error"]
            pd.testing.assert_frame_equal(
                _sorted(st_step.meta.get_metadata(), cols), _sorted(ry_step.meta.get_metadata(), cols)
            )
            assert st_step.meta.get_counts() == ry_step.meta.get_counts()


def words(ids, fmt="w{}") -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "a": [fmt.format(i) for i in ids]})


WRITES = pytest.mark.parametrize("writes", ["driver", "workers"])


@WRITES
def test_one_to_one_and_updates(ray_local, dbconn, writes):
    twin = Twin(dbconn, writes)
    twin.store(words(range(30)))
    twin.run()
    twin.assert_equal()
    assert len(twin.table(twin.ray, "out").get_data()) == 30
    twin.store(words(range(25, 35), "changed{}"))  # 5 updated, 5 new
    twin.run()
    twin.assert_equal()
    out = twin.table(twin.ray, "out").get_data().set_index("id")["a"]
    assert out[30] == "changed30!" and out[3] == "w3!"


@WRITES
def test_failing_batch_is_recorded_and_retried(ray_local, dbconn, writes):
    twin = Twin(dbconn, writes)
    df = words(range(20))
    df.loc[df["id"] == 9, "a"] = "bad"  # batch 8..11 fails
    twin.store(df)
    stats = RunStats()
    twin.run(RunConfig(callback=stats))
    twin.assert_equal()
    step = twin.ray["steps"][0]
    assert step.meta.get_counts() == {"processed": 20, "failed": 4}
    assert stats.steps[step.name].failed == 1  # reported on the driver
    assert stats.steps[step.name].batches == 5
    assert stats.steps[step.name].errors == ["ValueError: bad value in batch"]
    assert sorted(twin.table(twin.ray, "out").get_data()["id"]) == [i for i in range(20) if not 8 <= i <= 11]
    twin.store(words([9], "fixed{}"))
    twin.run()
    twin.assert_equal()
    assert step.meta.get_counts() == {"processed": 20, "failed": 0}


@WRITES
def test_deletes_propagate(ray_local, dbconn, writes):
    twin = Twin(dbconn, writes)
    twin.store(words(range(12)))
    twin.run()
    twin.delete([0, 1, 2, 7])
    twin.store(words([3, 4], "longer{}"))  # moves rows between even/odd outputs
    stats = RunStats()
    twin.run(RunConfig(callback=stats))
    twin.assert_equal()
    assert sorted(twin.table(twin.ray, "out").get_data()["id"]) == [3, 4, 5, 6, 8, 9, 10, 11]
    split = stats.steps[twin.ray["steps"][1].name]
    assert split.deleted >= 4  # the 4 deleted keys, plus rows that moved between outputs


@WRITES
def test_fail_fast_reraises_on_driver(ray_local, dbconn, writes):
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "ff")
    ds.get_table("ff_inp").store_chunk(pd.DataFrame({"id": [1, 2], "a": ["bad", "x"]}))
    with pytest.raises(ValueError, match="bad value in batch"):
        run_steps(ds, side["steps"], RunConfig(fail_fast=True), executor=RayExecutor(writes=writes))
    assert side["steps"][0].meta.get_counts() == {"processed": 2, "failed": 2}  # the failing batch is recorded


def test_progress_streams_on_driver_with_parallelism_one(ray_local, dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "p1", parallelism=1)
    ds.get_table("p1_inp").store_chunk(words(range(10)))
    seen = []

    class Recorder(RunStats):
        def on_step_progress(self, step, completed, total, **stats):
            super().on_step_progress(step, completed, total, **stats)
            seen.append((step.name, completed, total, stats["rows"]))

    run_steps(ds, side["steps"][:1], RunConfig(callback=Recorder()), executor=RayExecutor())
    assert seen == [("p1_exclaim", 1, 3, 4), ("p1_exclaim", 2, 3, 4), ("p1_exclaim", 3, 3, 2)]


def test_task_options_follow_executor_config():
    assert RayExecutor.task_options(ExecutorConfig()) == {"num_cpus": 1, "max_retries": 0}
    assert RayExecutor.task_options(ExecutorConfig(cpu=0.5, gpu=1, memory=2**20)) == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "memory": 2**20,
        "max_retries": 0,
    }


def test_streams_keys_with_bounded_tasks_in_flight(ray_local, dbconn):
    """The iterator is pulled lazily: never more than ``parallelism`` batches ahead of completion."""
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "sf", parallelism=3)
    ds.get_table("sf_inp").store_chunk(words(range(40)))
    step = side["steps"][0]
    count, batches = step.get_full_process_ids(ds)
    pulled = 0
    ahead = []

    def gen():
        nonlocal pulled
        for idx in batches:
            pulled += 1
            yield idx

    class Watch(RunStats):
        def on_step_progress(self, step, completed, total, **stats):
            super().on_step_progress(step, completed, total, **stats)
            ahead.append(pulled - completed)

    rc = RunConfig(callback=Watch())
    RayExecutor().run_process_batch(step, ds, count, gen(), step.process_batch, rc, step.executor_config)
    assert count == 10 and pulled == 10 and len(ahead) == 10
    assert max(ahead) <= 3  # at most 3 in flight
    assert ahead[0] == 2  # 3 were pulled and submitted, and no more, before the first completed
    assert sorted(ds.get_table("sf_out").get_data()["id"]) == list(range(40))


@WRITES
def test_run_result_has_failing_keys_and_traceback_from_workers(ray_local, dbconn, writes):
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "rr")
    df = words(range(20))
    df.loc[df["id"] == 9, "a"] = "bad"  # batch 8..11 fails inside a Ray task
    ds.get_table("rr_inp").store_chunk(df)
    result = run_steps(ds, side["steps"], executor=RayExecutor(writes=writes))
    step = result[side["steps"][0].name]
    assert not result.ok and (step.failed_batches, step.failed_keys) == (1, 4)
    error = step.errors[0]
    assert error.message == "ValueError: bad value in batch"
    assert sorted(error.keys["id"]) == [8, 9, 10, 11]
    assert "in exclaim" in error.user_traceback and "ray_pipelines.py" in error.user_traceback
    recorded = side["steps"][0].meta.get_metadata()
    text = recorded.loc[recorded["id"] == 9, "error"].iloc[0]
    assert text.startswith("ValueError: bad value in batch") and "in exclaim" in text  # traceback from the worker


def test_writes_auto_means_driver_on_sqlite_only(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    step = rp.build(ds, dbconn, "au")["steps"][0]
    assert RayExecutor().driver_writes(ds, step.batch_processor) is dbconn.is_sqlite
    assert RayExecutor(writes="driver").driver_writes(ds, step.batch_processor)
    assert not RayExecutor(writes="workers").driver_writes(ds, step.batch_processor)
    assert not RayExecutor(writes="driver").driver_writes(ds, step.process_batch)  # a plain function: tasks write
    assert not RayExecutor(writes="driver").driver_writes(ds, BatchProcessor(step.prepare_batch))  # no halves
    with pytest.raises(ValueError, match="writes='sometimes'"):
        RayExecutor(writes="sometimes")


@WRITES
def test_who_writes(ray_local, dbconn, writes):
    """With writes="driver" every output and metadata write of the run goes through the driver's connection;
    with writes="workers" none does (the tasks write)."""
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, f"ww{writes[0]}")
    ds.get_table(side["tables"]["inp"]).store_chunk(words(range(12)))
    out_table = side["tables"]["out"]
    writes_seen: List[str] = []

    def watch(conn, cursor, statement, parameters, context, executemany):
        if out_table in statement and statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes_seen.append(statement)

    event.listen(dbconn.con, "before_cursor_execute", watch)
    try:
        run_steps(ds, side["steps"][:1], executor=RayExecutor(writes=writes))
    finally:
        event.remove(dbconn.con, "before_cursor_execute", watch)
    assert sorted(ds.get_table(out_table).get_data()["id"]) == list(range(12))
    if writes == "driver":
        assert len(writes_seen) >= 3  # three batches of 4, each committed by the driver
    else:
        assert writes_seen == []


def test_unpicklable_error_is_recorded_with_its_keys(ray_local, dbconn):
    """A batch failing with an exception that cannot be pickled, computed on a worker and committed by the
    driver: recorded failed with its keys and text, the traceback of the worker kept, the other batches done."""
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "up", first=rp.exclaim_or_lock)
    df = words(range(8))
    df.loc[df["id"] == 5, "a"] = "locked"  # batch 4..7
    ds.get_table("up_inp").store_chunk(df)
    result = run_steps(ds, side["steps"][:1], executor=RayExecutor(writes="driver"))
    step = side["steps"][0]
    assert step.meta.get_counts() == {"processed": 8, "failed": 4}
    failure = result[step.name].errors[0]
    assert failure.message == "RuntimeError: UnpicklableError: locked value in batch"
    assert sorted(failure.keys["id"]) == [4, 5, 6, 7]
    assert "in exclaim_or_lock" in failure.user_traceback
    recorded = step.meta.get_metadata().set_index("id")["error"]
    assert recorded[5].startswith("UnpicklableError: locked value in batch") and "exclaim_or_lock" in recorded[5]
    assert sorted(ds.get_table("up_out").get_data()["id"]) == [0, 1, 2, 3]


def test_keys_read_in_pages(ray_local, dbconn):
    """Pages of one batch each (chunk_size 4): Ray pulls batches across page boundaries; every key once."""
    twin = Twin(dbconn)
    for side in (twin.st, twin.ray):
        for step in side["steps"]:
            step.key_page_rows = 5
            assert step.page_rows() == 4
    twin.store(words(range(30)))
    stats = RunStats()
    run_steps(twin.ds, twin.ray["steps"], RunConfig(callback=stats), executor=RayExecutor())
    run_steps(twin.ds, twin.st["steps"], executor=SingleThreadExecutor())
    twin.assert_equal()
    first = stats.steps[twin.ray["steps"][0].name]
    assert (first.batches, first.rows) == (8, 30)
    assert sorted(twin.table(twin.ray, "out").get_data()["id"]) == list(range(30))
    assert twin.ray["steps"][0].meta.get_changed_idx_count(twin.ds) == 0


@WRITES
def test_a_failing_batch_among_several_in_one_task(ray_local, dbconn, writes):
    """``batches_per_task=3``: five batches in two tasks; the third batch of the first task fails and is
    recorded alone, the batches around it are written, and progress comes once per batch."""
    ds = DataStore(dbconn, create_meta_table=True)
    st, ray_side = rp.build(ds, dbconn, "gst"), rp.build(ds, dbconn, "gray")
    df = words(range(20))
    df.loc[df["id"] == 9, "a"] = "bad"  # batch 8..11, the third
    for side in (st, ray_side):
        ds.get_table(side["tables"]["inp"]).store_chunk(df)
    run_steps(ds, st["steps"], executor=SingleThreadExecutor())
    seen = []

    class Recorder(RunStats):
        def on_step_progress(self, step, completed, total, **stats):
            super().on_step_progress(step, completed, total, **stats)
            if step.name == "gray_exclaim":
                seen.append(completed)

    stats = Recorder()
    run_steps(ds, ray_side["steps"], RunConfig(callback=stats),
              executor=RayExecutor(writes=writes, batches_per_task=3))
    step = ray_side["steps"][0]
    assert seen == [1, 2, 3, 4, 5]
    assert stats.steps[step.name].failed == 1 and stats.steps[step.name].batches == 5
    assert step.meta.get_counts() == {"processed": 20, "failed": 4}
    failed = step.meta.get_metadata().query("is_success == False")["id"]
    assert sorted(failed) == [8, 9, 10, 11]
    for name in ("out", "even", "odd"):
        got = ds.get_table(ray_side["tables"][name]).get_data()
        want = ds.get_table(st["tables"][name]).get_data()
        pd.testing.assert_frame_equal(_sorted(got, ["id", "a"]), _sorted(want, ["id", "a"]))


def test_tasks_take_several_cheap_batches_once_their_time_is_known(ray_local, dbconn, caplog, monkeypatch):
    """By default a task holds one batch until batch times are known, then about ``TASK_SECONDS`` of
    batches; until then at most ``PROBE_TASKS_PER_SLOT`` tasks per task slot are out (2 CPUs, tasks of
    half a CPU: 4 slots), and ``parallelism`` always bounds the batches pulled ahead of completion.

    A 4-row batch takes from 5 ms to over a second in a worker, depending on what else the two cores
    run (four workers and the driver share them), so the default 0.1 s target sizes every task at one
    batch on a loaded machine. How sizes follow batch times is ``test_task_sizes``; here the target is
    raised so that any batch time is cheap and tasks reach the cap of ``parallelism // 4`` whatever the
    load (the sizer runs on the driver, where the patch applies)."""
    import datapipe.executor.ray as ray_executor
    from datapipe.executor.ray import PROBE_TASKS_PER_SLOT

    monkeypatch.setattr(ray_executor, "TASK_SECONDS", 1000.0)
    ds = DataStore(dbconn, create_meta_table=True)
    side = rp.build(ds, dbconn, "tg", parallelism=40)
    ds.get_table("tg_inp").store_chunk(words(range(400)))  # 100 batches of 4 rows, a few ms each
    step = side["steps"][0]
    count, batches = step.get_full_process_ids(ds)
    pulled, ahead = 0, []

    def gen():
        nonlocal pulled
        for idx in batches:
            pulled += 1
            yield idx

    class Watch(RunStats):
        def on_step_progress(self, step, completed, total, **stats):
            super().on_step_progress(step, completed, total, **stats)
            ahead.append(pulled - completed)

    with caplog.at_level("DEBUG", logger="datapipe.executor.ray"):
        RayExecutor().run_process_batch(step, ds, count, gen(), step.process_batch, RunConfig(callback=Watch()),
                                        step.executor_config)
    tasks = int(re.search(r"100 batches in (\d+) Ray tasks", caplog.text).group(1))
    # one batch per task until the first task reported: at most 8 out, and the one sized before that
    # report came; then 40 // 4 = 10 a task: at most 9 + 91 / 10 rounded up = 19 tasks
    assert 11 <= tasks <= 19
    assert len(ahead) == 100 and max(ahead) <= 40
    assert step.executor_config.cpu == 0.5
    assert ahead[0] <= 4 * PROBE_TASKS_PER_SLOT - 1  # one-batch tasks, one of them done
    assert sorted(ds.get_table("tg_out").get_data()["id"]) == list(range(400))


def test_task_sizes():
    from datapipe.executor.ray import MAX_BATCHES_PER_TASK, TASK_SECONDS, _TaskSizer

    sizer = _TaskSizer(None, parallelism=100)
    assert sizer.next_size() == 1  # nothing known yet
    sizer.record(seconds=4 * TASK_SECONDS / 10, batches=4)  # a tenth of TASK_SECONDS a batch
    assert sizer.next_size() == 10
    sizer.record(seconds=0.0, batches=10_000)  # very cheap batches: capped
    assert sizer.next_size() == min(MAX_BATCHES_PER_TASK, 100 // 4)
    slow = _TaskSizer(None, parallelism=100)
    slow.record(seconds=5 * TASK_SECONDS, batches=1)
    assert slow.next_size() == 1
    assert _TaskSizer(None, parallelism=3).limit == 1  # several tasks must stay in flight
    assert _TaskSizer(8, parallelism=100).next_size() == 8
    assert _TaskSizer(8, parallelism=5).next_size() == 5


def test_task_sizer_holds_tasks_back_only_until_the_first_report():
    from datapipe.executor.ray import PROBE_TASKS_PER_SLOT, _TaskSizer

    sizer = _TaskSizer(None, parallelism=100, slots=2)
    assert not sizer.holds(2 * PROBE_TASKS_PER_SLOT - 1)
    assert sizer.holds(2 * PROBE_TASKS_PER_SLOT)
    sizer.record(seconds=0.01, batches=1)
    assert not sizer.holds(99)
    assert not _TaskSizer(None, parallelism=100).holds(99)  # slots unknown: parallelism alone bounds
    assert _TaskSizer(None, parallelism=100).holds(100)
    assert not _TaskSizer(4, parallelism=100, slots=2).holds(50)  # a fixed size needs no probe


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_batches_per_task_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="batches_per_task"):
        RayExecutor(batches_per_task=bad)

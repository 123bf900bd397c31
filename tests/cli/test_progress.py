"""The progress display: bars on a terminal, quiet otherwise; the summary table in both cases."""

import io

import pandas as pd
import pytest
from rich.console import Console
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.progress import RichProgress, RunStats
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB


def shout(df: pd.DataFrame) -> pd.DataFrame:
    if (df["a"] == "bad").any():
        raise ValueError("bad row")
    return df.assign(a=df["a"].str.upper())


@pytest.fixture
def pipeline(tmp_path):
    dbconn = DBConn(f"sqlite:///{tmp_path}/p.sqlite")
    ds = DataStore(dbconn, create_meta_table=True)
    schema = [Column("id", Integer, primary_key=True), Column("a", String)]
    catalog = Catalog({n: Table(TableStoreDB(dbconn, n, schema, create_table=True)) for n in ("inp", "out")})
    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(shout, inputs=["inp"], outputs=["out"], chunk_size=4, name="shout")])
    )
    inp = ds.get_table("inp")
    inp.store_chunk(pd.DataFrame({"id": range(10), "a": [f"x{i}" for i in range(10)]}))
    yield ds, steps, inp
    dbconn.con.dispose()


def console(terminal: bool) -> Console:
    colors = "standard" if terminal else None
    return Console(file=io.StringIO(), force_terminal=terminal, width=140, color_system=colors)


def test_progress_bars_on_a_terminal(pipeline):
    ds, steps, _ = pipeline
    out = console(terminal=True)
    run_steps(ds, steps, RunConfig(callback=RichProgress(console=out)))
    text = out.file.getvalue()
    assert "\x1b[" in text  # ANSI control sequences of a live display
    assert "3/3" in text and "batches" in text and "10 rows" in text and "rows/s" in text and "ETA" in text
    assert "datapipe run summary" in text


def test_quiet_when_not_a_terminal(pipeline):
    ds, steps, _ = pipeline
    out = console(terminal=False)
    progress = RichProgress(console=out)
    assert progress.show_progress is False
    run_steps(ds, steps, RunConfig(callback=progress))
    text = out.file.getvalue()
    assert "\x1b[" not in text and "batches" not in text and "rows/s" not in text
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert lines[0] == ["datapipe", "run", "summary"]
    assert lines[1] == ["step", "processed", "changed", "deleted", "failed", "seconds"]
    assert lines[3][:5] == ["shout", "10", "10", "0", "0"]


def test_failed_batches_and_deletes_in_stats(pipeline):
    ds, steps, inp = pipeline
    run_steps(ds, steps)
    inp.delete_by_idx(pd.DataFrame({"id": [0, 1, 2]}))
    inp.store_chunk(pd.DataFrame({"id": [5, 9], "a": ["bad", "new"]}))
    out = console(terminal=True)
    progress = RichProgress(console=out)
    run_steps(ds, steps, RunConfig(callback=progress))
    s = progress.steps["shout"]
    assert (s.batches, s.total_batches, s.rows, s.failed) == (2, 2, 5, 1)
    assert s.errors == ["ValueError: bad row"]
    # the batch {0,1,2,5} failed (the bad row shares it); {9} changed
    assert (s.changed, s.deleted) == (1, 0)
    assert "1 failed" in out.file.getvalue()


def test_run_stats_counts_deletes():
    stats = RunStats()

    class Step:
        name = "s"

    stats.on_run_start([Step()])
    stats.on_step_start(Step(), 2)
    stats.on_step_progress(Step(), 1, 2, rows=4, changed=1, deleted=3)
    stats.on_step_progress(Step(), 2, 2, rows=2, changed=2, deleted=0)
    stats.on_step_success(Step())
    s = stats.steps["s"]
    assert (s.batches, s.rows, s.changed, s.deleted, s.failed) == (2, 6, 3, 3, 0)
    assert s.seconds >= 0 and not stats.failed_steps

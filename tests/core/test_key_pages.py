"""Full runs read their pending keys in pages (``datapipe.sql.pages``), on SQLite and PostgreSQL.

The change query is evaluated once; the database holds the keys and the run reads them back
``page_rows`` at a time. These tests check that every key is handed out exactly once even when
inputs change between pages, that order, filters and the batch count survive paging, that the
page size bounds what is read at a time, and that no transaction stays open between pages
(PostgreSQL: no backend pins the vacuum horizon; SQLite: a WAL checkpoint can complete).
"""

import sqlite3
from collections import Counter

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String, select

from datapipe.compute import Pipeline, build_compute, run_steps
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.sql.pages import MaterialisedRows
from datapipe.step import batch_transform
from datapipe.step.batch_transform import BatchTransform
from datapipe.testing import assert_datatable_equal


def cols(*keys, data=("a",)):
    return [Column(k, Integer, primary_key=True) for k in keys] + [Column(c, String) for c in data]


def rows(ids, prefix="v"):
    return pd.DataFrame({"id": list(ids), "a": [f"{prefix}{i}" for i in ids]})


def bang(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(a=df["a"] + "!")


def open_transactions(dbconn) -> list:
    """What could hold back VACUUM (PostgreSQL) or a WAL checkpoint (SQLite) right now."""
    if dbconn.is_sqlite:
        path = dbconn.con.url.database
        con = sqlite3.connect(path, timeout=0.5)
        try:
            busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            con.close()
        return ["a reader or writer blocks the checkpoint"] if busy else []
    with dbconn.con.connect() as con:
        return con.exec_driver_sql(
            "SELECT pid, state, backend_xmin::text FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND (backend_xmin IS NOT NULL OR state LIKE 'idle in transaction%%')"
        ).fetchall()


def test_pages_hand_out_every_key_once_while_inputs_change(ds, make_catalog, dbconn):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    handed_out = []

    def func(df, idx):  # asks for idx: called for every batch, also when its rows are gone
        handed_out.extend(idx["id"].tolist())
        return bang(df)

    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, ["inp"], ["out"], chunk_size=3)]))
    step = steps[0]
    step.key_page_rows = 7  # rounded down to whole batches: pages of 6 keys, 4 pages for 23 keys
    assert step.page_rows() == 6
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(rows(range(23)))

    pages = []
    original_read = MaterialisedRows._read_page

    def counting_read(self):
        page = original_read(self)
        pages.append(len(page))
        return page

    class WriteBetweenPages(RunCallback):
        """After the first batch (page 2 not read yet): change inputs on other connections."""

        def __init__(self):
            self.progress = []
            self.blockers = None

        def on_step_progress(self, step, completed, total, **stats):
            self.progress.append((completed, total))
            if completed == 1:
                self.blockers = open_transactions(dbconn)
                inp.store_chunk(rows([0, 20], "changed"))  # 0 already processed, 20 in page 4
                inp.store_chunk(rows([100]))  # a new key: not in this run's candidates
                inp.delete_by_idx(pd.DataFrame({"id": [10]}))  # in page 2, not processed yet

    cb = WriteBetweenPages()
    MaterialisedRows._read_page = counting_read
    try:
        run_steps(ds, steps, RunConfig(callback=cb))
    finally:
        MaterialisedRows._read_page = original_read

    assert sorted(handed_out) == list(range(23))  # every key of the run, each exactly once
    assert max(Counter(handed_out).values()) == 1
    assert pages == [6, 6, 6, 5]  # the page size bounds every read
    assert cb.progress == [(i, 8) for i in range(1, 9)]  # 8 batches, counted before the first
    assert cb.blockers == []  # nothing held open between pages

    # key 20 was read after its change; key 0 before (still pending); 10 deleted; 100 not seen yet
    expected_first = bang(pd.concat([rows([i for i in range(23) if i not in (0, 10, 20)]), rows([0]),
                                     rows([20], "changed")]))
    assert_datatable_equal(out, expected_first)
    assert step.meta.get_changed_idx_count(ds) == 2

    handed_out.clear()
    run_steps(ds, steps)
    assert sorted(handed_out) == [0, 100]
    final = inp.get_data()
    assert len(final) == 23  # 22 left of the first 23, plus 100
    assert_datatable_equal(out, bang(final))
    assert step.meta.get_changed_idx_count(ds) == 0


def test_a_full_run_takes_one_snapshot_per_page_of_keys(ds, make_catalog, monkeypatch):
    """The batches of a page record the snapshot taken as the page was handed out (one round trip per page
    on PostgreSQL, not one per batch; the first page's is the run's own, taken before its change query);
    a change committed between two pages is seen by the later page."""
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], chunk_size=2)]))
    step = steps[0]
    step.key_page_rows = 4  # 10 keys: pages of 4, 4, 2 keys; 5 batches
    inp, out = ds.get_table("inp"), ds.get_table("out")
    inp.store_chunk(rows(range(10)))
    taken = []
    original = batch_transform.take_snapshot

    def counted(dbconn):
        taken.append(original(dbconn))
        return taken[-1]

    monkeypatch.setattr(batch_transform, "take_snapshot", counted)

    class ChangeAfterFirstBatch(RunCallback):
        def on_step_progress(self, step, completed, total, **stats):
            if completed == 1:  # key 1 is in the first page (its snapshot is older), key 9 in the last
                inp.store_chunk(rows([1, 9], "changed"))

    run_steps(ds, steps, RunConfig(callback=ChangeAfterFirstBatch()))
    assert len(taken) == 2  # one per page after the first
    assert_datatable_equal(out, bang(pd.concat([rows([i for i in range(10) if i != 9]), rows([9], "changed")])))
    assert sorted(step.meta.get_changed_idx(None)[0]["id"]) == [1]  # 9 was read after its change: not pending
    run_steps(ds, steps)
    assert_datatable_equal(out, bang(inp.get_data()))
    assert step.meta.get_changed_idx_count(ds) == 0


def test_paging_keeps_order_filters_and_batch_boundaries(ds, make_catalog):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    calls = []

    def func(df, idx):
        calls.append(idx["id"].tolist())
        return bang(df)

    step_decl = BatchTransform(func, ["inp"], ["out"], chunk_size=2, order_by=["id"], order="desc")
    steps = build_compute(ds, catalog, Pipeline([step_decl]))
    steps[0].key_page_rows = 5  # pages of 4 keys (two batches)
    ds.get_table("inp").store_chunk(rows(range(11)))

    run_steps(ds, steps, RunConfig(filters={"id": [0, 2, 3, 5, 7, 8, 9]}))
    assert calls == [[9, 8], [7, 5], [3, 2], [0]]
    calls.clear()
    run_steps(ds, steps)  # the filtered run did not advance the watermark: the rest is still pending
    assert calls == [[10, 6], [4, 1]]
    assert_datatable_equal(ds.get_table("out"), bang(rows(range(11))))


def test_full_process_ids_stream_pages_and_release_the_connection(ds, make_catalog, dbconn):
    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], chunk_size=4)]))
    steps[0].key_page_rows = 8
    ds.get_table("inp").store_chunk(rows(range(30)))
    pool = dbconn.con.pool

    count, batches = steps[0].get_full_process_ids(ds)
    assert count == 8
    seen = [b["id"].tolist() for b in batches]
    assert seen == [list(range(i, min(i + 4, 30))) for i in range(0, 30, 4)]
    assert pool.checkedout() == 0  # exhausting the iterator dropped the held keys

    count, batches = steps[0].get_full_process_ids(ds, chunk_size=5)
    assert count == 6
    assert next(batches)["id"].tolist() == [0, 1, 2, 3, 4]
    assert pool.checkedout() == 1  # the keys are held on one connection while the run goes on
    batches.close()  # an abandoned run (an executor that raised) lets go as well
    assert pool.checkedout() == 0


@pytest.mark.parametrize("small_expected", [False, True])
@pytest.mark.parametrize("page_rows", [1, 3, 8, 9, 10, 1000])
def test_materialised_rows_pages(ds, make_catalog, dbconn, page_rows, small_expected):
    catalog = make_catalog(t=cols("id"))
    ds_table = catalog.get_datatable(ds, "t")
    ds_table.store_chunk(rows(range(10)))
    meta = ds_table.meta.sql_table
    query = select(meta.c.id).where(meta.c.id != 4).order_by(meta.c.id.desc())
    with MaterialisedRows(dbconn, query, ["id"], [Integer()], page_rows, small_expected=small_expected) as held:
        assert held.count == 9
        pages = [p["id"].tolist() for p in held.pages()]
    assert sum(pages, []) == [9, 8, 7, 6, 5, 3, 2, 1, 0]
    assert all(len(p) <= page_rows for p in pages)
    assert held.pages_read == len(pages) == -(-9 // page_rows)
    assert held.largest_page == min(9, page_rows)
    assert dbconn.con.pool.checkedout() == 0

    empty = MaterialisedRows(dbconn, query.where(meta.c.id > 100), ["id"], [Integer()], page_rows,
                             small_expected=small_expected).open()
    assert empty.count == 0 and list(empty.pages()) == []
    assert list(MaterialisedRows(dbconn, None, ["id"], [Integer()]).open().pages()) == []
    with pytest.raises(ValueError, match="page_rows"):
        MaterialisedRows(dbconn, query, ["id"], [Integer()], 0)


def test_full_run_batches_report_counts_not_keys(ds, make_catalog):
    """A full run passes no changes downstream: the executor is handed counts, so it keeps no keys."""
    from datapipe.executor import SingleThreadExecutor

    returned = []

    class Keeping(SingleThreadExecutor):
        def run_process_batch(self, step, ds, idx_count, idx_gen, process_fn, run_config=None, executor_config=None):
            def recording(ds, idx, rc):
                changes = process_fn(ds, idx, rc)
                returned.append(changes)
                return changes

            return super().run_process_batch(step, ds, idx_count, idx_gen, recording, run_config, executor_config)

    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], chunk_size=4)]))
    inp = ds.get_table("inp")
    inp.store_chunk(rows(range(10)))
    result = run_steps(ds, steps, executor=Keeping())
    assert [c.key_count() for c in returned] == [4, 4, 2]
    assert all(c.changes == {} for c in returned)  # no key frames kept per batch
    assert (result.steps[0].processed, result.steps[0].changed, result.steps[0].deleted) == (10, 10, 0)
    inp.delete_by_idx(pd.DataFrame({"id": [1, 2]}))
    returned.clear()
    result = run_steps(ds, steps, executor=Keeping())
    assert [(c.key_count(), c.deleted_count) for c in returned] == [(2, 2)]
    assert (result.steps[0].processed, result.steps[0].changed, result.steps[0].deleted) == (2, 0, 2)


def test_a_full_run_evaluates_its_change_query_once(ds, make_catalog, dbconn):
    """A full run evaluates its change query once, into a ``DECLARE``d cursor (PostgreSQL) or a temporary
    table (SQLite), also over several pages, and holds nothing afterwards; opening held keys a second
    time does not evaluate the query again. A SQLite rerun (the step has watermarks) expects few keys:
    it fetches them plainly when they fit one page, and only when they do not, evaluates the query a
    second time into a table."""
    from sqlalchemy import event

    catalog = make_catalog(inp=cols("id"), out=cols("id"))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(bang, ["inp"], ["out"], chunk_size=4)]))
    steps[0].key_page_rows = 8
    ds.get_table("inp").store_chunk(rows(range(30)))
    evaluations = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if " AS allc" in statement:  # the change query's outer alias (see meta.changes)
            evaluations.append(statement.split(None, 1)[0])
        elif statement.startswith("CREATE TEMP TABLE"):
            evaluations.append("CREATE")

    held = ["DECLARE"] if not dbconn.is_sqlite else ["CREATE", "INSERT"]
    event.listen(dbconn.con, "after_cursor_execute", count)
    try:
        run_steps(ds, steps)  # the first run: no watermarks
        assert evaluations == held
        assert len(ds.get_table("out").get_data()) == 30
        assert dbconn.con.pool.checkedout() == 0

        ds.get_table("inp").store_chunk(rows(range(10), prefix="w"))
        for page_rows, expected in [(4, held if not dbconn.is_sqlite else ["SELECT", *held]),
                                    (10, held if not dbconn.is_sqlite else ["SELECT"])]:
            evaluations.clear()
            keys, _snapshot = steps[0].meta.open_changed_keys(page_rows=page_rows)
            with keys:  # entering what is already open
                assert keys.count == 10
                pages = [p["id"].tolist() for p in keys.pages()]
            assert sum(pages, []) == list(range(10))
            assert max(map(len, pages)) <= page_rows
            assert evaluations == expected
            assert dbconn.con.pool.checkedout() == 0
            assert open_transactions(dbconn) == []
    finally:
        event.remove(dbconn.con, "after_cursor_execute", count)

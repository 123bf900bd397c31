"""What a new user sees in the first hour (issue 13): run results, failures with keys and
tracebacks, ``fail_fast``, the warning for joins no transform key ties, and clear URL errors."""

import logging

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_pipeline, run_steps
from datapipe.run_result import RunFailed, format_failures
from datapipe.step import batch_transform
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import DBConn, MetaKey, TableStoreDB
from datapipe.store.pandas import TableStoreJsonLine


def numbers_schema():
    return [Column("id", Integer, primary_key=True), Column("n", Integer)]


def invert(numbers: pd.DataFrame) -> pd.DataFrame:
    return numbers.assign(n=numbers["n"].map(lambda n: 100 // n))


@pytest.fixture
def inverting(ds, make_catalog):
    catalog = make_catalog(numbers=numbers_schema(), inverse=numbers_schema())
    pipeline = Pipeline([BatchTransform(invert, inputs=["numbers"], outputs=["inverse"], chunk_size=2, name="inv")])
    steps = build_compute(ds, catalog, pipeline)
    return catalog, pipeline, steps


def test_run_result_counts_processed_changed_deleted(ds, inverting):
    _, _, steps = inverting
    numbers = ds.get_table("numbers")
    numbers.store_chunk(pd.DataFrame({"id": [1, 2, 3], "n": [1, 2, 4]}))
    result = run_steps(ds, steps)
    assert result.ok and result["inv"].processed == 3 and result["inv"].changed == 3
    assert result["inv"].deleted == 0 and result["inv"].seconds >= 0

    assert run_steps(ds, steps)["inv"].processed == 0  # nothing changed

    numbers.delete_by_idx(pd.DataFrame({"id": [3]}))
    result = run_steps(ds, steps)
    assert (result["inv"].processed, result["inv"].changed, result["inv"].deleted) == (1, 0, 1)


def test_failed_keys_exception_and_user_traceback(ds, inverting):
    _, _, steps = inverting
    ds.get_table("numbers").store_chunk(pd.DataFrame({"id": [1, 2, 3, 4, 5], "n": [5, 0, 4, 0, 1]}))
    result = run_steps(ds, steps)
    assert not result.ok
    inv = result["inv"]
    # batches of 2: (1, 2) and (3, 4) fail, (5) succeeds
    assert (inv.failed_batches, inv.failed_keys, inv.changed) == (2, 4, 1)
    error = inv.errors[0]
    assert error.message.startswith("ZeroDivisionError")
    assert sorted(error.keys["id"]) == [1, 2] and error.key_count == 2
    assert "in invert" in error.user_traceback and "batch_transform.py" not in error.user_traceback
    assert "batch_transform.py" in error.traceback  # the full one has Datapipe's frames too

    text = format_failures(result)
    assert "step inv: 4 key(s) failed in 2 batch(es)" in text
    assert "keys: {id=1}, {id=2}" in text and "100 // n" in text
    with pytest.raises(RunFailed, match="inv: 4 key"):
        result.raise_for_failures()


def test_a_batch_the_database_refuses_on_a_first_run_is_recorded_with_its_keys(ds, make_catalog):
    """On PostgreSQL a first run sends new rows in pipeline mode and learns of a refusal late; the
    refused batch is still recorded as failed with its keys, and every other batch lands."""
    strict = [Column("id", Integer, primary_key=True), Column("n", Integer, nullable=False)]
    catalog = make_catalog(numbers=numbers_schema(), inverse=strict)

    def invert_or_null(numbers: pd.DataFrame) -> pd.DataFrame:
        return numbers.assign(n=numbers["n"].map(lambda n: 100 // n if n else None).astype("Int64"))

    pipeline = Pipeline([BatchTransform(invert_or_null, ["numbers"], ["inverse"], chunk_size=2, name="inv")])
    steps = build_compute(ds, catalog, pipeline)
    ds.get_table("numbers").store_chunk(pd.DataFrame({"id": range(1, 9), "n": [5, 4, 2, 0, 1, 10, 20, 25]}))
    inv = run_steps(ds, steps)["inv"]
    assert (inv.failed_batches, inv.failed_keys, inv.changed) == (1, 2, 6)
    assert sorted(inv.errors[0].keys["id"]) == [3, 4] and "null" in inv.errors[0].message.lower()
    stored = ds.get_table("inverse").get_data().sort_values("id")
    assert stored["id"].tolist() == [1, 2, 5, 6, 7, 8] and stored["n"].tolist() == [20, 25, 100, 10, 5, 4]
    meta = steps[0].meta.get_metadata().sort_values("id")
    assert meta["id"].tolist() == list(range(1, 9))
    assert meta["is_success"].astype(bool).tolist() == [True, True, False, False, True, True, True, True]


def test_fail_fast_raises_the_function_error(ds, inverting):
    catalog, pipeline, steps = inverting
    ds.get_table("numbers").store_chunk(pd.DataFrame({"id": [1, 2], "n": [0, 1]}))
    with pytest.raises(ZeroDivisionError):
        run_pipeline(ds, catalog, pipeline, fail_fast=True)
    assert not run_steps(ds, steps, fail_fast=False).ok  # recorded, not raised


def test_update_external_table_changes_are_counted(ds, tmp_path):
    path = tmp_path / "things.jsonl"
    path.write_text('{"id": 1, "n": 1}\n{"id": 2, "n": 2}\n')
    store = TableStoreJsonLine(path, primary_schema=[Column("id", Integer, primary_key=True)])
    steps = build_compute(ds, Catalog({"things": Table(store)}), Pipeline([UpdateExternalTable(output="things")]))
    first = run_steps(ds, steps).steps[0]
    assert (first.changed, first.deleted) == (2, 0)
    path.write_text('{"id": 1, "n": 10}\n')
    second = run_steps(ds, steps).steps[0]
    assert (second.changed, second.deleted) == (1, 1)


def totals(users: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    sums = orders.groupby("user_id", as_index=False)["amount"].sum()
    return users[["user_id"]].merge(sums, on="user_id", how="left").fillna({"amount": 0})


def _join_pipeline(dbconn: DBConn, ds, meta_key: bool):
    user_col = Column("user_id", Integer, MetaKey()) if meta_key else Column("user_id", Integer)
    suffix = "mk" if meta_key else "plain"
    catalog = Catalog(
        {
            "users": Table(TableStoreDB(dbconn, f"users_{suffix}", [Column("user_id", Integer, primary_key=True),
                                                                    Column("name", String)], create_table=True)),
            "orders": Table(TableStoreDB(dbconn, f"orders_{suffix}", [Column("order_id", Integer, primary_key=True),
                                                                      user_col, Column("amount", Integer)],
                                         create_table=True)),
            "totals": Table(TableStoreDB(dbconn, f"totals_{suffix}", [Column("user_id", Integer, primary_key=True),
                                                                      Column("amount", Integer)], create_table=True)),
        }
    )
    step = BatchTransform(totals, inputs=["users", "orders"], outputs=["totals"], name=f"totals_{suffix}")
    return build_compute(ds, catalog, Pipeline([step]))


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """The warning is once per process; each test starts as a fresh process would."""
    monkeypatch.setattr(batch_transform, "_warned", set())


@pytest.mark.parametrize("meta_key", [False, True], ids=["plain-column", "MetaKey"])
def test_join_on_a_non_key_column(ds, dbconn, caplog, meta_key):
    with caplog.at_level(logging.WARNING, logger="datapipe"):
        steps = _join_pipeline(dbconn, ds, meta_key)
    warnings = [r.getMessage() for r in caplog.records if "transform keys" in r.getMessage()]
    if meta_key:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "'totals_plain'" in warnings[0] and "'orders'" in warnings[0] and "MetaKey()" in warnings[0]

    ds.get_table("users").store_chunk(pd.DataFrame({"user_id": range(10), "name": [f"u{i}" for i in range(10)]}))
    ds.get_table("orders").store_chunk(pd.DataFrame({"order_id": [1], "user_id": [3], "amount": [5]}))
    assert run_steps(ds, steps).ok
    ds.get_table("orders").store_chunk(pd.DataFrame({"order_id": [2], "user_id": [4], "amount": [7]}))
    result = run_steps(ds, steps)
    # The cost the warning is about: without MetaKey one new order reprocesses every user.
    assert result.steps[0].processed == (1 if meta_key else 10)
    got = ds.get_table("totals").get_data().set_index("user_id")["amount"]
    assert (got[3], got[4], got[0]) == (5, 7, 0)


def test_warning_is_logged_once_per_process(ds, dbconn, caplog):
    with caplog.at_level(logging.WARNING, logger="datapipe"):
        _join_pipeline(dbconn, ds, False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datapipe"):
        _join_pipeline(dbconn, type(ds)(dbconn, create_meta_table=True), False)
    assert not [r for r in caplog.records if "transform keys" in r.getMessage()]


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlte:///x.db", "unknown database kind 'sqlte'"),
        ("postgres//u:secret@h/db", "is not a valid URL"),
        ("postgresql+nosuchdriver://u:secret@h/db", "unknown database kind"),
    ],
)
def test_bad_database_url_is_one_clear_line(url, message):
    with pytest.raises(ValueError, match=message) as info:
        DBConn(url)
    text = str(info.value)
    assert "\n" not in text and "secret" not in text and "sqlite:///" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _ping(n: int) -> int:  # ping/pong: distinct consecutive frames, which Python does not collapse
    return _pong(n - 1)


def _pong(n: int) -> int:
    if n == 0:
        raise RuntimeError("deep down")
    return _ping(n - 1)


def deep_failure(numbers: pd.DataFrame) -> pd.DataFrame:
    _ping(13)
    return numbers


def test_user_traceback_keeps_the_function_and_the_raise(ds, make_catalog):
    catalog = make_catalog(numbers=numbers_schema(), out=numbers_schema())
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(deep_failure, ["numbers"], ["out"], name="deep")]))
    ds.get_table("numbers").store_chunk(pd.DataFrame({"id": [1], "n": [1]}))
    error = run_steps(ds, steps)["deep"].errors[0]
    lines = error.user_traceback.splitlines()
    assert "in deep_failure" in lines[0] and 'raise RuntimeError("deep down")' in lines[-1]
    assert any("frame(s) ..." in line for line in lines)
    assert error.traceback.count("in _p") == 14  # the full traceback has every frame

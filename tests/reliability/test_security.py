"""Security basics: filter values are bound parameters; passwords never reach logs, errors or CLI output."""

from __future__ import annotations

import logging
import traceback

import pandas as pd
import pytest
from conftest import redis_store_available
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.meta.locks import StepLockedError, step_lock
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.store.table_store import StoreError
from datapipe.testing.services import free_port

PAYLOADS = [
    "x'; DROP TABLE inp; --",
    'x"; DROP TABLE inp; --',
    "' OR '1'='1",
    "x); DELETE FROM inp_meta; --",
    "%' OR name LIKE '%",
]
SECRET = "S3cr3t-pw_Zq9"


def _pipeline(dbconn):
    schema = [Column("name", String, primary_key=True), Column("v", Integer)]
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", schema, create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", schema, create_table=True)),
        }
    )
    pipe = Pipeline([BatchTransform(lambda df: df.assign(v=df["v"] * 10), ["inp"], ["out"], name="times_ten")])
    steps = build_compute(ds, catalog, pipe)
    names = ["plain", "x", "1", *PAYLOADS]
    catalog.get_datatable(ds, "inp").store_chunk(pd.DataFrame({"name": names, "v": range(len(names))}))
    return ds, steps, names


@pytest.mark.parametrize("payload", PAYLOADS)
def test_filter_values_are_bound_parameters(dbconn, payload):
    ds, steps, names = _pipeline(dbconn)
    run_steps(ds, steps, RunConfig(filters={"name": payload}, fail_fast=True))
    # the filter matched the payload literally: exactly that row was processed
    out = ds.get_table("out").get_data()
    assert list(out["name"]) == [payload]
    assert int(out["v"].iloc[0]) == names.index(payload) * 10
    # and nothing was dropped or deleted
    assert sorted(ds.get_table("inp").get_data()["name"]) == sorted(names)
    assert len(ds.get_table("inp").get_metadata()) == len(names)
    # a list filter with payloads is bound too
    run_steps(ds, steps, RunConfig(filters={"name": [payload, "plain"]}, fail_fast=True))
    assert sorted(ds.get_table("out").get_data()["name"]) == sorted([payload, "plain"])


def test_payload_keys_in_change_lists_and_run_idx(dbconn):
    ds, steps, names = _pipeline(dbconn)
    idx = pd.DataFrame({"name": PAYLOADS})
    steps[0].run_idx(ds, idx, RunConfig(fail_fast=True))
    assert sorted(ds.get_table("out").get_data()["name"]) == sorted(PAYLOADS)
    ds.get_table("inp").delete_by_idx(idx)
    run_steps(ds, steps, RunConfig(fail_fast=True))
    assert sorted(ds.get_table("out").get_data()["name"]) == sorted(n for n in names if n not in PAYLOADS)


# ---------------------------------------------------------------- passwords


def _all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__)) + repr(error)


def test_password_not_in_errors_or_logs_for_unreachable_postgres(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://user:{SECRET}@127.0.0.1:{free_port()}/nodb"
    con = DBConn(url)
    assert SECRET not in repr(con)
    with pytest.raises(StoreError) as info:
        DataStore(con, create_meta_table=True).get_or_create_table(
            "t", TableStoreDB(con, "t", [Column("id", Integer, primary_key=True)], create_table=True)
        )
    assert "127.0.0.1" in str(info.value) and "***" in str(info.value)
    assert SECRET not in _all_text(info.value)
    assert SECRET not in caplog.text


def test_password_not_in_logs_of_a_run_with_failures(postgres_url, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    try:
        url = postgres_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth: any password is accepted
        con = DBConn(url)
        ds, steps, names = _pipeline(con)
        bad = build_compute(
            ds,
            Catalog({n: Table(ds.get_table(n).table_store) for n in ("inp", "out")}),
            Pipeline([BatchTransform(lambda df: 1 / 0, ["inp"], ["out"], name="times_ten")]),
        )
        run_steps(ds, bad)  # failures are logged and recorded
        with pytest.raises(ZeroDivisionError) as info:
            run_steps(ds, bad, RunConfig(fail_fast=True))
        assert SECRET not in _all_text(info.value)
        monkeypatch.setenv("DATAPIPE_STEP_LOCK", "fail")
        with step_lock(DBConn(url), "times_ten", mode="fail"):  # another runner holds the step
            with pytest.raises(StepLockedError) as locked:
                run_steps(ds, steps)
        assert "***" in str(locked.value) and SECRET not in _all_text(locked.value)
        for dt in ds.tables.values():
            assert SECRET not in dt.table_store.describe() and SECRET not in repr(dt)
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert "ZeroDivisionError" in caplog.text  # the logs were captured
    assert SECRET not in caplog.text


def test_password_not_in_redis_errors(caplog):
    if not redis_store_available():
        pytest.skip("datapipe-redis is not installed")
    from datapipe_redis import RedisStore

    caplog.set_level(logging.DEBUG)
    store = RedisStore(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", "t", [Column("id", Integer, primary_key=True)])
    assert SECRET not in repr(store) and SECRET not in store.describe()
    with pytest.raises(StoreError) as info:
        store.insert_rows(pd.DataFrame({"id": [1]}))
    assert "127.0.0.1" in str(info.value)
    assert SECRET not in _all_text(info.value)
    assert SECRET not in caplog.text

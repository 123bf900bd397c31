"""Importing datapipe and building a pipeline does not import ``redis``; using a RedisStore does."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pandas as pd
    from sqlalchemy import Column, Integer, String

    import datapipe
    from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
    from datapipe.datatable import DataStore
    from datapipe.plugins import create_table_store, list_plugins
    from datapipe.step.batch_transform import BatchTransform
    from datapipe.store.database import DBConn, TableStoreDB

    report = {}
    schema = lambda: [Column("id", Integer, primary_key=True), Column("a", String)]
    db = DBConn("sqlite:///" + sys.argv[1] + "/meta.sqlite")
    ds = DataStore(db, create_meta_table=True)
    catalog = Catalog({
        "inp": Table(TableStoreDB(db, "inp", schema(), create_table=True)),
        "out": Table(TableStoreDB(db, "out", schema(), create_table=True)),
    })
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df, inputs=["inp"], outputs=["out"])]))
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": [1], "a": ["x"]}))
    run_steps(ds, steps)
    report["after_sql_pipeline"] = "redis" in sys.modules
    kinds = [k for p in list_plugins() for k in p.store_kinds]
    report["redis_kind_listed"] = "redis" in kinds
    report["after_list_plugins"] = "redis" in sys.modules
    import datapipe_redis
    report["after_import_package"] = "redis" in sys.modules
    store = create_table_store("redis", connection=sys.argv[2], name="lazy", data_sql_schema=schema())
    report["after_create_store"] = "redis" in sys.modules
    store.insert_rows(pd.DataFrame({"id": [1], "a": ["x"]}))
    report["after_use"] = "redis" in sys.modules
    print(json.dumps(report))
    """
)


def test_redis_is_imported_only_when_a_redis_store_is_used(tmp_path, redis_url):
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), redis_url], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report == {
        "after_sql_pipeline": False,
        "redis_kind_listed": True,
        "after_list_plugins": False,
        "after_import_package": False,
        "after_create_store": False,
        "after_use": True,
    }

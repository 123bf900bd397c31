import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.testing import assert_datatable_equal


def schema():
    return [Column("id", Integer, primary_key=True), Column("a", String)]


def test_one_to_one(dbconn):
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "inp": Table(TableStoreDB(dbconn, "inp", schema(), create_table=True)),
            "out": Table(TableStoreDB(dbconn, "out", schema(), create_table=True)),
        }
    )
    pipeline = Pipeline(
        [BatchTransform(lambda df: df.assign(a=df["a"] + "!"), inputs=["inp"], outputs=["out"], chunk_size=3)]
    )
    steps = build_compute(ds, catalog, pipeline)
    inp = ds.get_table("inp")
    inp.store_chunk(pd.DataFrame({"id": range(10), "a": [f"x{i}" for i in range(10)]}))
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": range(10), "a": [f"x{i}!" for i in range(10)]}))
    inp.delete_by_idx(pd.DataFrame({"id": [0, 1]}))
    inp.store_chunk(pd.DataFrame({"id": [5], "a": ["new"]}))
    run_steps(ds, steps)
    exp = pd.DataFrame({"id": range(2, 10), "a": [f"x{i}!" for i in range(2, 10)]})
    exp.loc[exp["id"] == 5, "a"] = "new!"
    assert_datatable_equal(ds.get_table("out"), exp)


def test_0_15_test_support_paths_still_import():
    """The 0.15 module paths of the test helpers re-export ``datapipe.testing``."""
    from datapipe.store.tests.abstract import AbstractBaseStoreTests
    from datapipe.testing import AbstractBaseStoreTests as kit
    from datapipe.testing import assert_df_equal as current
    from datapipe.tests.util import assert_df_equal

    assert AbstractBaseStoreTests is kit and assert_df_equal is current

"""Plugin discovery from separately installed distributions.

Needs ``tests/plugin_example`` and ``tests/plugin_broken`` installed (nox session ``plugins`` does it);
without them the module is skipped (a failure under CI=true).
"""

import itertools
import logging
from importlib.metadata import PackageNotFoundError, distribution

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.plugins import PluginError, PluginRegistry, create_table_store, get_executor, list_plugins
from datapipe.step.batch_transform import BatchTransform
from datapipe.testing import AbstractBaseStoreTests, assert_datatable_equal
from datapipe.testing.services import in_ci

for _dist in ("datapipe-example-plugin", "datapipe-broken-plugin"):
    try:
        distribution(_dist)
    except PackageNotFoundError:
        _msg = f"{_dist} is not installed (run `nox -s plugins`, or pip install tests/plugin_*)"
        if in_ci():
            raise RuntimeError(_msg) from None
        pytest.skip(_msg, allow_module_level=True)

_names = itertools.count()


def _plugin(dist):
    found = [p for p in list_plugins() if p.distribution == dist]
    assert found, f"{dist} not among {[p.distribution for p in list_plugins()]}"
    return found[0]


def test_list_plugins_shows_example():
    info = _plugin("datapipe-example-plugin")
    assert info.version == "0.1.0"
    assert info.store_kinds == ["example_memory"]
    assert info.executors == ["example_inline"]
    assert info.error is None
    core = _plugin("datapipe-core")
    assert "sql" in core.store_kinds and "filedir" in core.store_kinds


def test_broken_plugin_is_reported_and_isolated(caplog):
    info = _plugin("datapipe-broken-plugin")
    assert info.version == "0.0.1"
    assert info.error is not None and "ImportError" in info.error and "not-installed-client" in info.error
    assert info.store_kinds == [] and info.executors == []
    # a fresh registry logs the failure with the distribution name, and still serves the other plugins
    registry = PluginRegistry()
    with caplog.at_level(logging.WARNING, logger="datapipe.plugins"):
        kinds = registry.table_store_kinds()
    assert "example_memory" in kinds and "sql" in kinds
    assert any("datapipe-broken-plugin" in r.getMessage() for r in caplog.records), caplog.text


def test_create_example_store_and_executor_through_registry(dbconn):
    from datapipe_example_plugin import ExampleMemoryStore, InlineExecutor

    def schema():
        return [Column("id", Integer, primary_key=True), Column("a", String)]

    src = create_table_store("example_memory", name=f"src_{next(_names)}", data_sql_schema=schema())
    dst = create_table_store("example_memory", name=f"dst_{next(_names)}", data_sql_schema=schema())
    assert isinstance(src, ExampleMemoryStore)
    executor = get_executor("example_inline")
    assert isinstance(executor, InlineExecutor)

    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog({"src": Table(src), "dst": Table(dst)})
    pipeline = Pipeline([BatchTransform(lambda df: df.assign(a=df["a"].str.upper()), inputs=["src"],
                                        outputs=["dst"], chunk_size=4)])
    steps = build_compute(ds, catalog, pipeline)
    ds.get_table("src").store_chunk(pd.DataFrame({"id": range(10), "a": [f"x{i}" for i in range(10)]}))
    run_steps(ds, steps, executor=executor)
    assert executor.batches_run == 3
    assert_datatable_equal(ds.get_table("dst"), pd.DataFrame({"id": range(10), "a": [f"X{i}" for i in range(10)]}))


def test_unknown_kind_names_installed_kinds():
    with pytest.raises(PluginError) as e:
        create_table_store("no_such_store")
    msg = str(e.value)
    assert "no_such_store" in msg and "example_memory" in msg and "sql" in msg
    assert "datapipe-broken-plugin" in msg  # tells the user a plugin failed to load


def test_unknown_known_provider_says_what_to_install():
    with pytest.raises(PluginError, match="pip install datapipe-qdrant"):
        create_table_store("qdrant")


def test_unknown_executor():
    with pytest.raises(PluginError, match="example_inline"):
        get_executor("no_such_executor")


class TestExampleMemoryStore(AbstractBaseStoreTests):
    """The third-party store passes the core's conformance kit, created through the registry."""

    @pytest.fixture
    def store_maker(self):
        def make(data_sql_schema):
            return create_table_store("example_memory", name=f"kit_{next(_names)}", data_sql_schema=data_sql_schema)

        return make

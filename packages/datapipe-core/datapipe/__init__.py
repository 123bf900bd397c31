"""Datapipe: durable, incremental batch processing over pandas DataFrames.

Layers, bottom up (``tools/check_layers.py`` checks that imports only go down)::

    errors, settings, types, keyset, hashing        foundations
    run_config, run_callback, run_stats, run_result what a run is told and reports back
    sql/                                            connections, rows and key filters, bulk writes
    store/   meta/                                  data stores | metadata, change versions, locks
    datatable                                       a table = store + metadata; the unit of work
    executor/                                       where batches run (single thread, Ray)
    compute                                         catalog, pipeline, ComputeStep lifecycle, run_steps
    step/                                           BatchTransform, BatchGenerate, ...
    progress, tracing, hookspecs, plugins, cli, ui, testing

Compatibility: these module paths of datapipe 0.15 (or of earlier releases) re-export names that now
live elsewhere, and stay importable:

* ``datapipe.store.database``: ``DBConn`` (``datapipe.sql.connection``), ``MetaKey`` (``datapipe.sql.schema``);
* ``datapipe.store.table_store``: ``StoreError`` (``datapipe.errors``);
* ``datapipe.tests.util``: the assertions (``datapipe.testing.asserts``);
* ``datapipe.store.tests.abstract``: ``AbstractBaseStoreTests`` (``datapipe.testing.kit``);
* ``datapipe.tests.services``: test servers (``datapipe.testing.services``);
* ``datapipe.progress``: ``RunStats``, ``StepStats`` (``datapipe.run_stats``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("datapipe-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

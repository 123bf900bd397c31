"""UpdateExternalTable: track a table that something other than Datapipe writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Optional

from datapipe.compute import Catalog, ComputeOutput, ComputeStep, PipelineStep, StepRun, resolve_outputs, step_name
from datapipe.datatable import DataStore, TableWrite
from datapipe.executor import Executor, batch_stats
from datapipe.run_config import RunConfig
from datapipe.types import ChangeList, Labels


def update_external_table(ds: DataStore, output: ComputeOutput, run_config: Optional[RunConfig] = None) -> ChangeList:
    """Scan the store; record new, changed and vanished rows in the metadata. Never writes the store."""
    dt = output.dt
    started = time.time()
    changes = ChangeList()
    for chunk in dt.table_store.read_rows_meta_pseudo_df(run_config=run_config):
        now = max(time.time(), started)  # never before ``started``: see do_batch_generate
        [(changed, _)] = ds.write([TableWrite(dt, chunk, write_store=False)], now)
        changes.append(dt.name, changed)
    vanished = dt.delete_stale_by_process_ts(started, delete_store=False)
    changes.append(dt.name, vanished)
    changes.deleted_count = len(vanished)
    return changes


class UpdateExternalTableStep(ComputeStep):
    def _run_full(self, ds: DataStore, run_config: RunConfig, executor: Optional[Executor], run: StepRun) -> None:
        run.start(1)
        changes = update_external_table(ds, self.output_dts[0], run_config)
        if run_config.callback is not None:
            n = sum(len(idx) for idx in changes.changes.values())
            run_config.callback.on_step_progress(self, 1, 1, rows=n, **batch_stats(changes))


@dataclass
class UpdateExternalTable(PipelineStep):
    """Declare that ``output`` is written outside Datapipe and should be scanned for changes.

    Each run reads every row of the store (in chunks, hashing the content), and records in the
    metadata the rows that are new, changed or gone since the last scan, so that steps reading
    the table process exactly those. It never writes the store. Put it before the steps that
    read the table. The step is named ``update_<table name>_<hash>`` as in datapipe 0.15.

    Args:
        output: the table (catalog name, ``Table`` or ORM class) written by someone else: a
            folder of files, a JSON-lines file edited by hand, a table another program fills.
        labels: ``[("key", "value"), ...]`` tags for CLI selection.

    Example:
        ```python
        Pipeline([
            UpdateExternalTable(output="products"),          # data/products.jsonl
            BatchTransform(add_tax, inputs=["products"], outputs=["priced"]),
        ])
        ```
    """

    output: Any
    labels: Optional[Labels] = None

    def build_compute(self, ds: DataStore, catalog: Catalog) -> List[ComputeStep]:
        outputs = resolve_outputs(ds, catalog, [self.output])
        name = step_name(None, "UpdateExternalTable", [], outputs, base=f"update_{outputs[0].name}")
        return [UpdateExternalTableStep(name, [], outputs, self.labels)]

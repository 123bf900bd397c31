"""Build a datapipe 0.15 deployment: run with datapipe-core==0.15.0 installed (its own virtualenv).

    ADOPT_DB_URL=... python build_015.py N [pending]

Ingests N items, runs the pipeline, deletes one item and edits another, runs again: the database
then holds processed keys, tombstones and rows written at different times. With ``pending``, item 7
is edited afterwards and not processed: 0.15 considers its dependent keys pending. Prints the step names.
"""

import sys

import pipeline

from datapipe.compute import run_steps

n = int(sys.argv[1])
item = pipeline.catalog.get_datatable(pipeline.ds, "item")
for start in range(0, n, 1000):  # 0.15 writes a chunk in one statement: SQLite caps its parameters
    item.store_chunk(pipeline.items(range(start, min(n, start + 1000))))
run_steps(pipeline.ds, pipeline.app.steps)
item.delete_by_idx(pipeline.items([0])[["id"]])
item.store_chunk(pipeline.items([1], offset=1))
run_steps(pipeline.ds, pipeline.app.steps)
if sys.argv[2:] == ["pending"]:
    item.store_chunk(pipeline.items([7], offset=1))
print(" ".join(s.name for s in pipeline.app.steps))

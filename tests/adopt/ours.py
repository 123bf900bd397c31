"""Drive the adopted pipeline with our package (a separate process per call, like a deployment).

    ADOPT_DB_URL=... python ours.py run          -> JSON {step: keys processed}
    ADOPT_DB_URL=... python ours.py edit ID      -> edits one item (its value + 1)
    ADOPT_DB_URL=... python ours.py reingest N   -> stores the items as 0.15 last saw them; prints keys changed
    ADOPT_DB_URL=... python ours.py adopt-killed -> adopt, SIGKILLed after its second committed hash chunk
"""

import json
import os
import signal
import sys
from collections import Counter

import pandas as pd

from datapipe.compute import run_steps
from datapipe.run_callback import RunCallback
from datapipe.run_config import RunConfig
from datapipe.store.database import no_table_creation


class CountKeys(RunCallback):
    def __init__(self) -> None:
        self.keys: Counter = Counter()

    def on_step_progress(self, step, completed, total, **stats) -> None:  # type: ignore[no-untyped-def]
        self.keys[step.name] += int(stats.get("rows", 0))


def main(command: str, *args: str) -> None:
    with no_table_creation():  # like `datapipe db adopt`: loading the pipeline changes nothing
        import pipeline
    item = pipeline.catalog.get_datatable(pipeline.ds, "item")
    if command == "run":
        counter = CountKeys()
        run_steps(pipeline.ds, pipeline.app.steps, RunConfig(callback=counter))
        print(json.dumps({s.name: counter.keys[s.name] for s in pipeline.app.steps if s.input_dts}))
    elif command == "edit":
        row = item.get_data(pd.DataFrame({"id": [int(args[0])]}))
        item.store_chunk(row.assign(value=row["value"] + 1))
    elif command == "reingest":
        n = int(args[0])
        current = pd.concat([pipeline.items([1], offset=1), pipeline.items(range(2, n))], ignore_index=True)
        print(len(item.store_chunk(current)))
    elif command == "adopt-killed":
        from datapipe.meta import adopt

        chunks = []

        def kill_after_second(point: str) -> None:
            chunks.append(point)
            if len(chunks) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        adopt.HASH_CHUNK = 500
        adopt.fault_hook = kill_after_second
        tables = [pipeline.ds.get_table(name) for name in pipeline.ds.tables]
        steps = [(s.meta, s.changes) for s in pipeline.app.steps if hasattr(s, "changes")]
        adopt.adopt_metadata(pipeline.ds.meta_dbconn, tables, steps)
        raise SystemExit("adopt finished before the kill point")
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])

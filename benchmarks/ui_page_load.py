"""Page-load times of ``datapipe ui`` next to a large table (not part of the default test run).

    python benchmarks/ui_page_load.py --rows 1000000            # SQLite in a temp dir
    python benchmarks/ui_page_load.py --rows 1000000 --db postgresql://...

Builds ``items(id, name, value)`` with ``--rows`` rows (bulk ``store_chunk`` of 100 000 rows at a
time) and a ``BatchTransform`` over it, then times, on a real server (uvicorn in a thread):

* API calls: ``/api/steps`` (pending keys from the change query), ``/api/tables``, a table's first
  page, a deep page (offset ``rows/2``), a data-column filter, "last changed first", ``/metrics``;
* with ``/usr/bin/chromium`` (Playwright), the time from navigation until the page has rendered,
  for the graph and for the table page;

in two states: every key pending (the step never ran), and nothing pending (the step's metadata
filled with ``fill_metadata``, as after a full run). Prints one line per measurement.
Needs the ``ui`` extra, ``httpx`` and ``playwright``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from typing import Any, Callable, Dict

import numpy as np
import pandas as pd
from sqlalchemy import Column, Float, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

CHUNK = 100_000


def copy(df: pd.DataFrame) -> pd.DataFrame:
    return df


def build(url: str, rows: int) -> DatapipeApp:
    dbconn = DBConn(url)
    ds = DataStore(dbconn, create_meta_table=True)
    def schema() -> list:
        return [Column("id", Integer, primary_key=True), Column("name", String), Column("value", Float)]

    catalog = Catalog(
        {
            "items": Table(TableStoreDB(dbconn, "items", schema(), create_table=True)),
            "copied": Table(TableStoreDB(dbconn, "copied", schema(), create_table=True)),
        }
    )
    app = DatapipeApp(ds, catalog, Pipeline([BatchTransform(copy, ["items"], ["copied"], name="copy")]))
    items = ds.get_table("items")
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        ids = np.arange(start, min(start + CHUNK, rows))
        items.store_chunk(pd.DataFrame({"id": ids, "name": [f"item{i}" for i in ids], "value": ids * 0.5}))
    print(f"load {rows} rows: {time.perf_counter() - started:.1f}s")
    return app


def serve(app: DatapipeApp) -> str:
    import uvicorn

    from datapipe.ui.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(app), log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_api(url: str, rows: int) -> Dict[str, float]:
    import httpx

    client = httpx.Client(base_url=url, timeout=600)

    def get(path: str) -> Callable[[], Any]:
        def call() -> None:
            response = client.get(path)
            assert response.status_code == 200, response.text

        return call

    deep = max(1, rows // 2 // 50)
    paths = {
        "api/steps": "/api/steps",
        "api/tables": "/api/tables",
        "rows page 1": "/api/tables/items/rows",
        f"rows page {deep}": f"/api/tables/items/rows?page={deep}",
        "rows filter name=": f"/api/tables/items/rows?filter=name=item{rows // 3}",
        "rows last changed first": "/api/tables/items/rows?sort=update_ts&order=desc",
        "metrics": "/metrics",
    }
    return {name: timed(get(path)) for name, path in paths.items()}


def measure_browser(url: str) -> Dict[str, float]:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    result = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args, headless=True)
        page = browser.new_page()
        page.set_default_timeout(600_000)
        for name, path in (("page: graph", "/"), ("page: table items", "/#/table/items")):
            def load(path: str = path) -> None:
                page.goto("about:blank")
                page.goto(url + path)
                page.wait_for_function("() => document.getElementById('main').dataset.renders")

            result[name] = timed(load)
        browser.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in a temp dir)")
    parser.add_argument("--no-browser", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = build(opts.db or f"sqlite:///{tmp}/ui.sqlite", opts.rows)
        url = serve(app)
        for state in ("all keys pending", "nothing pending"):
            if state == "nothing pending":
                started = time.perf_counter()
                app.steps[0].fill_metadata(app.ds)
                print(f"fill_metadata: {time.perf_counter() - started:.1f}s")
            timings = measure_api(url, opts.rows)
            if not opts.no_browser:
                timings.update(measure_browser(url))
            for name, seconds in timings.items():
                print(f"{opts.rows} rows, {state}: {name}: {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()

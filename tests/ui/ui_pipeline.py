"""A pipeline for the web-view tests: a step that fails for some keys, and an image table.

``items`` (generated, ``N_ITEMS`` rows) -> ``check`` (fails for ids divisible by 7) -> ``checked``;
``images`` (generated PNG files in a folder) -> ``measure`` -> ``sizes``.
The metadata and SQL tables live in ``DATAPIPE_UI_DB`` (default ``sqlite:///ui.sqlite``), the images
under ``DATAPIPE_UI_FILES`` (default ``./images``).
"""

import os
import threading

import pandas as pd
from PIL import Image
from sqlalchemy import Column, Float, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_generate import BatchGenerate
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.store.filedir import PILFile, TableStoreFiledir

N_ITEMS = int(os.environ.get("N_ITEMS", "30"))
COLOURS = ["red", "green", "blue", "orange"]

#: When set, ``measure`` waits for it: a test holds a run in progress without sleeping.
GATE: "threading.Event | None" = None


def generate_items():
    ids = list(range(N_ITEMS))
    yield pd.DataFrame({"id": ids, "name": [f"item{i}" for i in ids], "value": [i * 1.5 for i in ids]})


def check(items: pd.DataFrame) -> pd.DataFrame:
    bad = items.loc[items["id"] % 7 == 0, "id"].tolist()
    if bad:
        raise ValueError(f"bad item(s) {bad}: ids divisible by 7 are refused")
    return items.assign(ok=True)[["id", "name"]]


def generate_images():
    yield pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(COLOURS))],
            "image": [Image.new("RGB", (64 + 16 * i, 48), c) for i, c in enumerate(COLOURS)],
        }
    )


def measure(images: pd.DataFrame) -> pd.DataFrame:
    if GATE is not None:
        GATE.wait(60)
    return pd.DataFrame(
        {"image_id": images["image_id"], "width": [im.size[0] for im in images["image"]]}
    )


def build() -> DatapipeApp:
    dbconn = DBConn(os.environ.get("DATAPIPE_UI_DB", "sqlite:///ui.sqlite"))
    files = os.environ.get("DATAPIPE_UI_FILES", "images")
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "items": Table(
                TableStoreDB(
                    dbconn,
                    "items",
                    [Column("id", Integer, primary_key=True), Column("name", String), Column("value", Float)],
                    create_table=True,
                )
            ),
            "checked": Table(
                TableStoreDB(
                    dbconn, "checked", [Column("id", Integer, primary_key=True), Column("name", String)],
                    create_table=True,
                )
            ),
            "images": Table(TableStoreFiledir(f"{files}/{{image_id}}.png", PILFile("png"))),
            "sizes": Table(
                TableStoreDB(
                    dbconn, "sizes", [Column("image_id", String, primary_key=True), Column("width", Integer)],
                    create_table=True,
                )
            ),
        }
    )
    pipeline = Pipeline(
        [
            BatchGenerate(generate_items, outputs=["items"], name="generate_items"),
            BatchTransform(check, inputs=["items"], outputs=["checked"], chunk_size=5, name="check"),
            BatchGenerate(generate_images, outputs=["images"], name="generate_images"),
            BatchTransform(measure, inputs=["images"], outputs=["sizes"], chunk_size=2, name="measure"),
        ]
    )
    return DatapipeApp(ds, catalog, pipeline)

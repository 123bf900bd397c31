"""Quickstart: a JSON-lines catalogue in, prices with tax computed, an SQLite table out.

Run it twice: the first run processes every product, the second processes nothing.
Edit a line of data/products.jsonl (or delete one) and run again: only that product is
reprocessed (or removed from the output).

    python app.py                         # run the pipeline (prints what it did)
    datapipe --pipeline app:app run       # the same through the CLI
"""

from pathlib import Path

import pandas as pd
from sqlalchemy import Column, Float, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import DBConn, TableStoreDB
from datapipe.store.pandas import TableStoreJsonLine

HERE = Path(__file__).parent
TAX_RATES = {"kitchen": 0.20, "office": 0.20, "audio": 0.25}

dbconn = DBConn(f"sqlite:///{HERE / 'quickstart.db'}")
ds = DataStore(dbconn, create_meta_table=True)

catalog = Catalog(
    {
        # Written by someone else (you, with an editor): Datapipe only scans it for changes.
        "products": Table(
            TableStoreJsonLine(
                HERE / "data" / "products.jsonl",
                primary_schema=[Column("product_id", String, primary_key=True)],
            )
        ),
        "priced": Table(
            TableStoreDB(
                dbconn,
                "priced",
                [
                    Column("product_id", String, primary_key=True),
                    Column("name", String),
                    Column("category", String),
                    Column("price", Float),
                    Column("price_with_tax", Float),
                ],
                create_table=True,
            )
        ),
    }
)


def add_tax(products: pd.DataFrame) -> pd.DataFrame:
    """Called only with new or changed products, in batches."""
    rate = products["category"].map(TAX_RATES).fillna(0.0)
    return products.assign(price_with_tax=(products["price"] * (1 + rate)).round(2))[
        ["product_id", "name", "category", "price", "price_with_tax"]
    ]


pipeline = Pipeline(
    [
        UpdateExternalTable(output="products"),
        BatchTransform(add_tax, inputs=["products"], outputs=["priced"], chunk_size=100),
    ]
)

app = DatapipeApp(ds, catalog, pipeline)


def main() -> None:
    result = run_steps(ds, app.steps)  # a RunResult: what each step processed, changed, deleted, failed
    result.raise_for_failures()
    priced = ds.get_table("priced")
    processed = result[app.steps[1].name].processed
    print(f"processed {processed} changed product(s); 'priced' now holds {priced.get_size()} rows")
    print(priced.get_data().sort_values("product_id").to_string(index=False))


if __name__ == "__main__":
    main()

"""A small shop: users and their orders in, one row of order totals per user out."""

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, MetaKey, TableStoreDB

dbconn = DBConn("sqlite:///shop.db")  # data and metadata in one SQLite file
ds = DataStore(dbconn, create_meta_table=True)

catalog = Catalog(
    {
        "users": Table(
            TableStoreDB(
                dbconn,
                "users",
                [Column("user_id", Integer, primary_key=True), Column("name", String)],
                create_table=True,
            )
        ),
        "orders": Table(
            TableStoreDB(
                dbconn,
                "orders",
                [
                    Column("order_id", Integer, primary_key=True),
                    Column("user_id", Integer, MetaKey()),  # ties each order to its user
                    Column("amount", Integer),
                ],
                create_table=True,
            )
        ),
        "totals": Table(
            TableStoreDB(
                dbconn,
                "totals",
                [
                    Column("user_id", Integer, primary_key=True),
                    Column("name", String),
                    Column("orders", Integer),
                    Column("amount", Integer),
                ],
                create_table=True,
            )
        ),
    }
)


def order_totals(users: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """Called with the rows of the users whose row or orders changed, never with everything."""
    negative = orders[orders["amount"] < 0]
    if len(negative):
        raise ValueError(f"negative amount in order(s) {negative['order_id'].tolist()}")
    per_user = orders.groupby("user_id", as_index=False).agg(
        orders=("order_id", "count"), amount=("amount", "sum")
    )
    totals = users.merge(per_user, on="user_id", how="left").fillna({"orders": 0, "amount": 0})
    return totals.astype({"orders": int, "amount": int})[["user_id", "name", "orders", "amount"]]


pipeline = Pipeline(
    [
        BatchTransform(order_totals, inputs=["users", "orders"], outputs=["totals"], name="order_totals"),
    ]
)

app = DatapipeApp(ds, catalog, pipeline)

"""End to end: SQL source -> BatchTransform -> RedisStore, incremental reruns, metadata on SQLite and PostgreSQL."""

import pandas as pd
import redis
from sqlalchemy import Column, Float, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import TableStoreDB
from datapipe.testing import assert_datatable_equal, assert_df_equal
from datapipe_redis import RedisStore


def make_doc(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": df["product_id"],
            "shop": df["shop"],
            "title": df["name"].str.upper(),
            "price_with_tax": df["price"] * 1.2,
        }
    )


def source(ids, price_offset=0.0):
    return pd.DataFrame(
        {
            "product_id": list(ids),
            "shop": [f"shop{i % 2}" for i in ids],
            "name": [f"product {i}" for i in ids],
            "price": [10.0 + i + price_offset for i in ids],
        }
    )


def test_incremental_pipeline_into_redis(dbconn, redis_url, request):
    hash_name = f"docs-{request.node.callspec.id}-{id(dbconn)}"
    key_cols = lambda: [Column("product_id", Integer, primary_key=True), Column("shop", String, primary_key=True)]  # noqa: E731
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "products": Table(
                TableStoreDB(dbconn, "products", key_cols() + [Column("name", String), Column("price", Float)], True)
            ),
            "docs": Table(
                RedisStore(
                    redis_url, hash_name, key_cols() + [Column("title", String), Column("price_with_tax", Float)]
                )
            ),
        }
    )
    calls = []

    def transform(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(df))
        return make_doc(df)

    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(transform, inputs=["products"], outputs=["docs"], chunk_size=7)])
    )
    products = ds.get_table("products")
    products.store_chunk(source(range(30)))
    run_steps(ds, steps)
    assert sum(calls) == 30
    assert_datatable_equal(ds.get_table("docs"), make_doc(source(range(30))))

    # Change 3 rows, delete 4, add 2: only those are processed.
    calls.clear()
    products.store_chunk(source([3, 4, 5], price_offset=100.0))
    products.delete_by_idx(source([10, 11, 12, 13])[["product_id", "shop"]])
    products.store_chunk(source([30, 31]))
    run_steps(ds, steps)
    assert sum(calls) == 5, calls

    expected_src = pd.concat(
        [
            source([i for i in range(30) if i not in (3, 4, 5, 10, 11, 12, 13)]),
            source([3, 4, 5], 100.0),
            source([30, 31]),
        ],
        ignore_index=True,
    )
    expected = make_doc(expected_src)
    assert_datatable_equal(ds.get_table("docs"), expected)
    # The hash itself holds exactly these records (no stale fields left behind).
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    assert raw.hlen(hash_name) == len(expected)
    fresh = RedisStore(redis_url, hash_name, key_cols() + [Column("title", String), Column("price_with_tax", Float)])
    assert_df_equal(fresh.read_rows(), expected, index_cols=["product_id", "shop"])

    # A no-op rerun calls nothing and changes nothing.
    calls.clear()
    run_steps(ds, steps)
    assert sum(calls) == 0
    assert raw.hlen(hash_name) == len(expected)
    raw.delete(hash_name)


def test_external_writes_in_the_documented_layout_flow_downstream(dbconn, redis_url, request):
    """Another program writes the hash directly; UpdateExternalTable picks the rows up, deletions too."""
    from datapipe.step.update_external_table import UpdateExternalTable

    hash_name = f"external-{request.node.callspec.id}-{id(dbconn)}"
    cols = lambda: [Column("id", Integer, primary_key=True), Column("text", String)]  # noqa: E731
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "ext": Table(RedisStore(redis_url, hash_name, cols())),
            "out": Table(TableStoreDB(dbconn, "out", cols(), create_table=True)),
        }
    )
    pipeline = Pipeline(
        [
            UpdateExternalTable("ext"),
            BatchTransform(lambda df: df.assign(text=df["text"] + "!"), inputs=["ext"], outputs=["out"]),
        ]
    )
    steps = build_compute(ds, catalog, pipeline)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.hset(hash_name, mapping={f"[{i}]": f'{{"text":"t{i}"}}' for i in range(5)})
    run_steps(ds, steps)
    assert_datatable_equal(ds.get_table("out"), pd.DataFrame({"id": range(5), "text": [f"t{i}!" for i in range(5)]}))

    raw.hdel(hash_name, "[0]")
    raw.hset(hash_name, "[3]", '{"text":"changed"}')
    run_steps(ds, steps)
    expected = pd.DataFrame({"id": [1, 2, 3, 4], "text": ["t1!", "t2!", "changed!", "t4!"]})
    assert_datatable_equal(ds.get_table("out"), expected)
    raw.delete(hash_name)

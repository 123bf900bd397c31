"""RedisStore specifics: key layout, one command per batch, cluster mode, errors, bad input, plugin lookup."""

from __future__ import annotations

import json
import math
import pickle

import pandas as pd
import pytest
import redis
from sqlalchemy import Column, DateTime, Float, Integer, String

from datapipe.plugins import create_table_store, list_plugins
from datapipe.store.table_store import StoreError
from datapipe.testing.services import RedisServer, free_port
from datapipe_redis import RedisStore
from datapipe_redis.store import COMMAND_BATCH


def schema():
    return [
        Column("image_id", Integer, primary_key=True),
        Column("model", String, primary_key=True),
        Column("score", Float),
        Column("label", String),
    ]


def sample(n: int, offset: int = 0) -> pd.DataFrame:
    ids = range(offset, offset + n)
    return pd.DataFrame(
        {
            "image_id": list(ids),
            "model": [f"m{i % 3}" for i in ids],
            "score": [i / 8 for i in ids],
            "label": [f"label-{i}" for i in ids],
        }
    )


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def hash_commands(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_key_layout_is_one_hash_with_json_fields(redis_store_maker, redis_url):
    store = redis_store_maker(schema())
    store.insert_rows(sample(2))
    client = raw_client(redis_url)
    assert client.type(store.name) == "hash"
    assert client.hgetall(store.name) == {
        '[0,"m0"]': '{"score":0.0,"label":"label-0"}',
        '[1,"m1"]': '{"score":0.125,"label":"label-1"}',
    }
    # A row written by someone else in the documented layout (compact JSON field) is readable.
    client.hset(store.name, json.dumps([7, "ext"], separators=(",", ":")), json.dumps({"score": 1.5, "label": None}))
    got = store.read_rows(pd.DataFrame({"image_id": [7], "model": ["ext"]}))
    assert got.to_dict("records") == [{"image_id": 7, "model": "ext", "score": 1.5, "label": None}]


def test_each_batch_is_a_few_commands_not_one_per_row(private_redis):
    client = raw_client(private_redis.url)
    client.config_resetstat()
    store = RedisStore(private_redis.url, "batched", schema())
    n = 2 * COMMAND_BATCH + 10
    df = sample(n)
    store.insert_rows(df)
    assert hash_commands(client, "hset") == 3
    assert len(store.read_rows(df[["image_id", "model"]])) == n
    assert hash_commands(client, "hmget") == 3
    store.delete_rows(df[["image_id", "model"]].iloc[: COMMAND_BATCH + 1])
    assert hash_commands(client, "hdel") == 2
    assert client.hlen(store.name) == n - COMMAND_BATCH - 1


def test_read_by_index_ignores_extra_columns_and_duplicates(redis_store_maker):
    store = redis_store_maker(schema())
    store.insert_rows(sample(5))
    idx = pd.DataFrame({"image_id": [1, 1, 3], "model": ["m1", "m1", "m0"], "other": [0, 1, 2]})
    got = store.read_rows(idx).sort_values("image_id").reset_index(drop=True)
    assert got["image_id"].tolist() == [1, 3]


def test_key_dtypes_are_normalised(redis_store_maker):
    """Keys given as floats/objects (after a merge, say) find the rows written with int keys."""
    store = redis_store_maker(schema())
    store.insert_rows(sample(4))
    idx = pd.DataFrame({"image_id": pd.Series([2.0, 3.0]), "model": pd.Series(["m2", "m0"], dtype=object)})
    assert sorted(store.read_rows(idx)["image_id"].tolist()) == [2, 3]


def test_dtypes_of_read_rows(redis_store_maker):
    cols = [Column("id", Integer, primary_key=True), Column("n", Integer), Column("x", Float),
            Column("t", DateTime), Column("tz", DateTime(timezone=True))]
    store = redis_store_maker(cols)
    df = pd.DataFrame(
        {
            "id": [1, 2],
            "n": [10, 20],
            "x": [0.1, math.pi],
            "t": pd.to_datetime(["2024-05-01 12:00:00.000123", "1999-12-31 23:59:59"], format="ISO8601"),
            "tz": pd.to_datetime(["2024-05-01 12:00:00+02:00", "2024-05-01 10:00:00+00:00"], utc=True),
        }
    )
    store.insert_rows(df)
    got = store.read_rows().sort_values("id").reset_index(drop=True)
    assert got["n"].dtype == "int64" and got["x"].dtype == "float64"
    assert got["x"].tolist() == [0.1, math.pi]  # exact float round trip
    assert pd.api.types.is_datetime64_dtype(got["t"]) and got["t"].tolist() == df["t"].tolist()
    assert str(got["tz"].dt.tz) == "UTC" and got["tz"].tolist() == df["tz"].tolist()


def test_rows_with_a_subset_of_columns_read_missing_columns_as_null(redis_store_maker):
    store = redis_store_maker(schema())
    store.insert_rows(sample(1)[["image_id", "model", "score"]])
    got = store.read_rows()
    assert list(got.columns) == ["image_id", "model", "score", "label"]
    assert got["label"].isna().all()


def test_cluster_mode_batches_and_pickles(redis_cluster_store_maker):
    store = redis_cluster_store_maker(schema())
    df = sample(COMMAND_BATCH + 3)
    store.insert_rows(df)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None and clone.cluster_mode
    got = clone.read_rows(df[["image_id", "model"]].iloc[:10])
    assert sorted(got["image_id"].tolist()) == list(range(10))
    assert "RedisCluster" in type(clone.client).__name__


def test_pickle_drops_the_client(redis_store_maker):
    store = redis_store_maker(schema())
    store.insert_rows(sample(3))
    assert store._client is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None
    assert len(clone.read_rows()) == 3


# ---------------------------------------------------------------- errors


def test_connection_refused_names_store_table_and_address_without_password():
    port = free_port()  # nothing listens here
    store = RedisStore(f"redis://:url-pw-123@127.0.0.1:{port}/0", "images", schema(), password="param-pw-456")
    with pytest.raises(StoreError) as err:
        store.insert_rows(sample(2))
    message = str(err.value)
    assert "RedisStore" in message and "'images'" in message
    assert f"127.0.0.1:{port}" in message
    assert "url-pw-123" not in message and "param-pw-456" not in message
    assert "***" in message


def test_stopped_server_raises_store_error():
    server = RedisServer().start()
    try:
        store = RedisStore(server.url, "gone", schema())
        store.insert_rows(sample(3))
        assert len(store.read_rows()) == 3
    finally:
        server.stop()
    with pytest.raises(StoreError, match=r"RedisStore table 'gone' .*127\.0\.0\.1:\d+.*failed"):
        store.read_rows(sample(1)[["image_id", "model"]])
    with pytest.raises(StoreError, match="'gone'"):
        store.delete_rows(sample(1)[["image_id", "model"]])


def test_wrong_password_is_an_auth_error_with_the_password_masked(redis_password_server):
    store = RedisStore(redis_password_server.url, "secure", schema(), password="wrong-pw-789")
    with pytest.raises(StoreError) as err:
        store.read_rows()
    message = str(err.value)
    assert "'secure'" in message and f"127.0.0.1:{redis_password_server.port}" in message
    assert "wrong-pw-789" not in message
    assert "Authentication" in message or "WRONGPASS" in message or "invalid" in message.lower()


def test_no_password_against_a_protected_server(redis_password_server):
    store = RedisStore(redis_password_server.url, "secure", schema())
    with pytest.raises(StoreError, match="NOAUTH|Authentication"):
        store.insert_rows(sample(1))


@pytest.mark.parametrize("how", ["param", "url"])
def test_right_password_works_and_is_never_shown(redis_password_server, how):
    url = redis_password_server.url
    if how == "url":
        store = RedisStore(url.replace("redis://", "redis://:s3cret-pw@"), f"ok-{how}", schema())
    else:
        store = RedisStore(url, f"ok-{how}", schema(), password="s3cret-pw")
    store.insert_rows(sample(4))
    assert len(store.read_rows()) == 4
    assert "s3cret-pw" not in store.describe() and "s3cret-pw" not in repr(store)
    assert "s3cret-pw" not in store.address


def test_cluster_mode_against_a_missing_server_raises_store_error():
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "cl", schema(), cluster_mode=True, password="pw-x")
    with pytest.raises(StoreError) as err:
        store.read_rows()
    assert "'cl'" in str(err.value) and f"127.0.0.1:{port}" in str(err.value) and "pw-x" not in str(err.value)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_value_error(redis_store_maker):
    store = redis_store_maker(schema())
    with pytest.raises(ValueError, match=r"RedisStore\('test-.*missing key column\(s\) \['model'\]"):
        store.insert_rows(sample(2).drop(columns=["model"]))
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['extra'\]"):
        store.insert_rows(sample(2).assign(extra=1))
    with pytest.raises(ValueError, match=r"null values in key column\(s\) \['model'\]"):
        store.insert_rows(sample(2).assign(model=[None, "a"]))
    with pytest.raises(ValueError, match="image_id"):
        store.insert_rows(sample(2).assign(image_id=["x", "y"]))
    with pytest.raises(ValueError, match="score"):
        store.insert_rows(sample(2).assign(score=["not", "numbers"]))
    with pytest.raises(ValueError, match=r"index missing key column\(s\) \['model'\]"):
        store.read_rows(pd.DataFrame({"image_id": [1]}))
    assert len(store.read_rows()) == 0, "nothing may be written by a rejected batch"


def test_constructor_validation():
    with pytest.raises(ValueError, match="no primary_key column"):
        RedisStore("redis://127.0.0.1:6379/0", "t", [Column("a", String)])
    with pytest.raises(ValueError, match="redis URL"):
        RedisStore(None, "t", schema())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RedisStore 't': connection 'http://u:\*\*\*@h:1' is not a redis URL"):
        RedisStore("http://u:pw@h:1", "t", schema())


# ---------------------------------------------------------------- plugin


def test_plugin_registers_the_redis_kind(redis_url):
    store = create_table_store("redis", connection=redis_url, name="via-plugin", data_sql_schema=schema())
    assert isinstance(store, RedisStore)
    info = [p for p in list_plugins() if p.distribution == "datapipe-redis"]
    assert len(info) == 1 and info[0].store_kinds == ["redis"] and info[0].error is None

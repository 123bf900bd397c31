"""datapipe-elastic without a server: document ids, documents, dtypes, masking, pickling, errors, plugin."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, String

from datapipe.plugins import create_table_store, list_plugins
from datapipe.store.json_codec import decode_column, dumps, encode_column, loads_many
from datapipe.store.table_store import StoreError
from datapipe.testing.services import free_port
from datapipe_elastic import ElasticStore
from datapipe_elastic.store import MAX_ID_BYTES, document_id_texts, hosts_of, secrets_of

HERE = Path(__file__).parent


def schema():
    return [
        Column("image_id", Integer, primary_key=True),
        Column("model", String, primary_key=True),
        Column("score", Float),
        Column("ok", Boolean),
        Column("meta", JSON),
        Column("seen", DateTime),
    ]


def offline_store(**kwargs) -> ElasticStore:
    """A store pointing at a port nothing listens on (the client connects lazily)."""
    return ElasticStore("images", schema(), {"hosts": [f"http://127.0.0.1:{free_port()}"]}, **kwargs)


def sample() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [1, 2],
            "model": ["resnet", "vit/b"],
            "score": [0.5, None],
            "ok": [True, False],
            "meta": [{"tags": ["a"]}, None],
            "seen": pd.to_datetime(["2024-01-02 03:04:05.5", None]),
        }
    )


# ---------------------------------------------------------------- document ids


def test_single_key_ids_are_the_key_text():
    assert document_id_texts([[1, 20]]) == ["1", "20"]
    assert document_id_texts([["a", "b/c"]]) == ["a", "b/c"]
    assert document_id_texts([[0.25]]) == ["0.25"]


def test_composite_key_ids_are_compact_json_arrays():
    assert document_id_texts([[7, 8], ["x", "ü"]]) == ['[7,"x"]', '[8,"ü"]']


def test_long_ids_are_hashed_deterministically():
    long = "k" * (MAX_ID_BYTES + 1)
    ids = document_id_texts([[long, "short"]])
    assert ids[0].startswith("sha256:") and len(ids[0]) == len("sha256:") + 64
    assert ids == document_id_texts([[long, "short"]])
    assert ids[1] == "short"
    assert document_id_texts([["k" * MAX_ID_BYTES]]) == ["k" * MAX_ID_BYTES]


def test_store_document_ids_normalise_key_dtypes():
    store = offline_store()
    ints = pd.DataFrame({"image_id": [1, 2], "model": ["a", "b"]})
    floats = pd.DataFrame({"image_id": [1.0, 2.0], "model": pd.Series(["a", "b"], dtype=object)})
    assert store.document_ids(ints) == store.document_ids(floats) == ['[1,"a"]', '[2,"b"]']
    single = ElasticStore("t", [Column("id", Integer, primary_key=True)], {})
    assert single.document_ids(pd.DataFrame({"id": np.array([5, 6], dtype="int32")})) == ["5", "6"]
    assert store._client is None, "computing ids must not connect"


# ---------------------------------------------------------------- documents and dtypes


def test_documents_hold_every_column_and_read_back_with_dtypes():
    store = offline_store()
    docs = store.documents(sample())
    assert docs[0] == {
        "image_id": 1,
        "model": "resnet",
        "score": 0.5,
        "ok": True,
        "meta": {"tags": ["a"]},
        "seen": "2024-01-02T03:04:05.500000",
    }
    assert docs[1]["score"] is None and docs[1]["meta"] is None and docs[1]["seen"] is None
    # Documents survive JSON (what Elasticsearch stores and returns as _source).
    back = store.rows_from_documents(loads_many([dumps(d) for d in docs]))
    assert list(back.columns) == [c.name for c in schema()]
    assert back["image_id"].dtype == "int64" and back["score"].dtype == "float64" and back["ok"].dtype == bool
    assert pd.api.types.is_datetime64_dtype(back["seen"])
    assert back["seen"].iloc[0] == pd.Timestamp("2024-01-02 03:04:05.5") and pd.isna(back["seen"].iloc[1])
    assert back["meta"].tolist() == [{"tags": ["a"]}, None]
    assert back["model"].tolist() == ["resnet", "vit/b"]


def test_key_name_remapping_renames_fields_both_ways():
    store = offline_store(key_name_remapping={"image_id": "imageId", "score": "relevance"})
    doc = store.documents(sample())[0]
    assert "imageId" in doc and "relevance" in doc and "image_id" not in doc and "score" not in doc
    back = store.rows_from_documents([doc])
    assert back["image_id"].tolist() == [1] and back["score"].tolist() == [0.5]
    with pytest.raises(ValueError, match="unknown column"):
        offline_store(key_name_remapping={"nope": "x"})
    with pytest.raises(ValueError, match="two columns to one field"):
        offline_store(key_name_remapping={"score": "model"})


def test_missing_fields_read_as_null_and_empty_reads_have_all_columns():
    store = offline_store()
    back = store.rows_from_documents([{"image_id": 3, "model": "m"}])
    assert back["score"].isna().all() and back["seen"].isna().all()
    empty = store.rows_from_documents([])
    assert list(empty.columns) == [c.name for c in schema()] and len(empty) == 0


def test_codec_roundtrips():
    col = Column("x", Float)
    vals = [0.1, 1 / 3, None]
    got = decode_column(loads_many([dumps(v) for v in encode_column(pd.Series(vals), col)]), col)
    assert got.iloc[:2].tolist() == vals[:2] and np.isnan(got.iloc[2])
    icol = Column("n", Integer)
    assert decode_column(encode_column(pd.Series([1, 2]), icol), icol).dtype == "int64"


def test_bad_input_is_a_clear_value_error_before_any_connection():
    store = offline_store()
    with pytest.raises(ValueError, match=r"ElasticStore\('images'.*missing key column\(s\) \['model'\]"):
        store.insert_rows(sample().drop(columns=["model"]))
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['extra'\]"):
        store.insert_rows(sample().assign(extra=1))
    with pytest.raises(ValueError, match=r"null values in key column\(s\) \['image_id'\]"):
        store.insert_rows(sample().assign(image_id=[1, None]))
    with pytest.raises(ValueError, match="image_id"):
        store.insert_rows(sample().assign(image_id=["x", "y"]))
    with pytest.raises(ValueError, match=r"index missing key column\(s\) \['model'\]"):
        store.read_rows(pd.DataFrame({"image_id": [1]}))
    assert store._client is None
    with pytest.raises(ValueError, match="no primary_key column"):
        ElasticStore("t", [Column("a", String)], {})


# ---------------------------------------------------------------- addresses, credentials, errors


def test_hosts_and_secrets_are_found_in_every_es_kwargs_form():
    assert hosts_of({"hosts": "http://h:9200"}) == ["http://h:9200"]
    assert hosts_of({"hosts": [{"host": "h", "port": 9201, "scheme": "https"}]}) == ["https://h:9201"]
    assert hosts_of({"cloud_id": "name:abc"}) == ["cloud_id=name"]
    kwargs = {"hosts": ["http://u:url-pw@h:9200"], "basic_auth": ("u", "basic-pw"), "api_key": "key-123"}
    assert set(secrets_of(kwargs)) == {"url-pw", "basic-pw", "key-123"}


def test_describe_masks_passwords():
    store = ElasticStore(
        "t", schema(), {"hosts": ["https://elastic:url-pw@es.local:9200"], "basic_auth": ("a", "b-pw")}
    )
    assert "url-pw" not in store.describe() and "b-pw" not in store.describe()
    assert "es.local:9200" in store.describe() and "***" in store.describe()


@pytest.mark.parametrize("op", ["insert", "read_idx", "read_all", "delete", "chunks"])
def test_connection_refused_is_a_store_error_naming_index_and_address(op):
    port = free_port()
    store = ElasticStore(
        "images",
        schema(),
        {
            "hosts": [f"http://elastic:url-pw-1@127.0.0.1:{port}"],
            "basic_auth": ("elastic", "basic-pw-2"),
            "max_retries": 0,
        },
    )
    with pytest.raises(StoreError) as err:
        if op == "insert":
            store.insert_rows(sample())
        elif op == "read_idx":
            store.read_rows(sample()[["image_id", "model"]])
        elif op == "read_all":
            store.read_rows()
        elif op == "delete":
            store.delete_rows(sample()[["image_id", "model"]])
        else:
            list(store.read_rows_meta_pseudo_df(10))
    message = str(err.value)
    assert "ElasticStore" in message and "'images'" in message and f"127.0.0.1:{port}" in message
    assert "url-pw-1" not in message and "basic-pw-2" not in message


def test_bad_es_kwargs_are_a_store_error():
    store = ElasticStore("t", schema(), {"hosts": ["not a url"], "basic_auth": ("u", "pw-zz")})
    with pytest.raises(StoreError, match="'t'") as err:
        store.read_rows()
    assert "pw-zz" not in str(err.value)


# ---------------------------------------------------------------- pickling and plugin


def test_pickle_keeps_parameters_and_drops_the_client():
    store = offline_store(key_name_remapping={"score": "s"}, mapping={"properties": {"score": {"type": "float"}}})
    store._client = object()  # stands for a live client: must not be pickled
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None
    assert (clone.index, clone.es_kwargs, clone.key_name_remapping, clone.mapping) == (
        store.index,
        store.es_kwargs,
        store.key_name_remapping,
        store.mapping,
    )
    assert [c.name for c in clone.get_schema()] == [c.name for c in schema()]
    assert clone.primary_keys == ["image_id", "model"]


def test_plugin_registers_the_elastic_kind_lazily():
    store = create_table_store("elastic", index="via-plugin", data_sql_schema=schema(), es_kwargs={})
    assert isinstance(store, ElasticStore) and store._client is None
    info = [p for p in list_plugins() if p.distribution == "datapipe-elastic"]
    assert len(info) == 1 and info[0].store_kinds == ["elastic"] and info[0].error is None


def test_importing_datapipe_and_listing_plugins_does_not_import_elasticsearch():
    code = (
        "import sys, datapipe, datapipe_elastic\n"
        "from datapipe.plugins import list_plugins\n"
        "assert any('elastic' in p.store_kinds for p in list_plugins())\n"
        "print('elasticsearch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_store_module_is_skipped_with_the_documented_reason_without_a_server():
    env = {k: v for k, v in os.environ.items() if k != "ELASTICSEARCH_URL"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(HERE / "test_elastic_store.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=HERE,
    )
    # The module is skipped at collection, so pytest collects nothing (exit code 5) and reports the skip.
    assert res.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, res.stdout + res.stderr
    assert "ELASTICSEARCH_URL is not set: Elasticsearch tests need a running server" in res.stdout
    assert "1 skipped" in res.stdout, res.stdout

"""File stores: the conformance kit on filedir (local + memory://), JSON lines and Excel; filedir features;
UpdateExternalTable over a folder written behind Datapipe's back."""

import itertools
import json
import re
import sys
import uuid

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import TableStoreDB
from datapipe.store.filedir import BytesFile, JSONFile, PandasParquetFile, PILFile, TableStoreFiledir
from datapipe.store.pandas import TableStoreExcel, TableStoreJsonLine
from datapipe.store.table_store import StoreError
from datapipe.testing import AbstractBaseStoreTests, assert_datatable_equal, assert_df_equal
from datapipe.types import IndexDF

_n = itertools.count()


def _keys(schema):
    return [c for c in schema if c.primary_key]


def _filedir_pattern(root, schema):
    names = [str(c.name) for c in _keys(schema)]
    return f"{root}/t{next(_n)}/" + "/".join(f"{{{k}}}" for k in names) + ".json"


class TestFiledirJSONLocal(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "json")

    @pytest.fixture
    def store_maker(self, tmp_path):
        def make(schema):
            return TableStoreFiledir(_filedir_pattern(tmp_path, schema), JSONFile(), primary_schema=_keys(schema),
                                     enable_rm=True)

        return make


class TestFiledirJSONMemory(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "json")

    @pytest.fixture
    def store_maker(self):
        root = f"memory://kit-{uuid.uuid4().hex}"

        def make(schema):
            return TableStoreFiledir(_filedir_pattern(root, schema), JSONFile(), primary_schema=_keys(schema),
                                     enable_rm=True)

        return make


class TestJsonLine(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "json")
    supported_key_types = ("int", "str", "float")

    @pytest.fixture
    def store_maker(self, tmp_path):
        def make(schema):
            return TableStoreJsonLine(tmp_path / f"t{next(_n)}.jsonl", primary_schema=_keys(schema))

        return make


class TestExcel(AbstractBaseStoreTests):
    supported_types = ("int", "float", "str", "bool", "datetime")
    large_batch_size = 2_000  # every write rewrites the whole workbook through openpyxl; keep the core session short

    @pytest.fixture
    def store_maker(self, tmp_path):
        pytest.importorskip("openpyxl")

        def make(schema):
            return TableStoreExcel(tmp_path / f"t{next(_n)}.xlsx", primary_schema=_keys(schema))

        return make


# ---------------------------------------------------------------- filedir features


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_keys_inferred_from_pattern(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/{{a}}/{{b}}.json", JSONFile())
    assert store.primary_keys == ["a", "b"]
    assert all(isinstance(c.type, String) for c in store.get_primary_schema())
    store.insert_rows(pd.DataFrame({"a": ["x", "x", "y"], "b": ["1", "2", "1"], "v": [1, 2, 3]}))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == ["x/1.json", "x/2.json",
                                                                                          "y/1.json"]
    assert json.loads((tmp_path / "x" / "2.json").read_text()) == {"v": 2}
    assert_df_equal(store.read_rows(), pd.DataFrame({"a": ["x", "x", "y"], "b": ["1", "2", "1"], "v": [1, 2, 3]}),
                    index_cols=["a", "b"])


def test_filepath_column_and_read_data_false(tmp_path):
    _write_json(tmp_path / "d" / "k1.json", {"v": 1})
    _write_json(tmp_path / "d" / "k2.json", {"v": 2})
    store = TableStoreFiledir(f"{tmp_path}/d/{{id}}.json", JSONFile(), add_filepath_column=True)
    got = store.read_rows().sort_values("id").reset_index(drop=True)
    assert got.to_dict("records") == [
        {"id": "k1", "v": 1, "filepath": f"{tmp_path}/d/k1.json"},
        {"id": "k2", "v": 2, "filepath": f"{tmp_path}/d/k2.json"},
    ]
    keys_only = TableStoreFiledir(f"{tmp_path}/d/{{id}}.json", JSONFile(), add_filepath_column=True, read_data=False)
    got = keys_only.read_rows(IndexDF(pd.DataFrame({"id": ["k2", "nope"]})))
    assert got.to_dict("records") == [{"id": "k2", "filepath": f"{tmp_path}/d/k2.json"}]


def test_file_url_and_memory_url(tmp_path):
    store = TableStoreFiledir(f"file://{tmp_path}/{{id}}.json", JSONFile())
    store.insert_rows(pd.DataFrame({"id": ["a"], "v": [1]}))
    assert (tmp_path / "a.json").exists()
    mem = TableStoreFiledir(f"memory://{uuid.uuid4().hex}/{{id}}.json", JSONFile(), add_filepath_column=True)
    mem.insert_rows(pd.DataFrame({"id": ["a"], "v": [1]}))
    row = mem.read_rows().iloc[0]
    assert row["filepath"].startswith("memory://") and row["filepath"].endswith("/a.json")


def test_wildcard_pattern_is_readonly(tmp_path):
    _write_json(tmp_path / "2024" / "a.json", {"v": 1})
    _write_json(tmp_path / "2025" / "b.json", {"v": 2})
    (tmp_path / "2025" / "ignored.txt").write_text("x")
    store = TableStoreFiledir(f"{tmp_path}/*/{{id}}.json", JSONFile())
    assert store.readonly
    assert_df_equal(store.read_rows(), pd.DataFrame({"id": ["a", "b"], "v": [1, 2]}))
    assert_df_equal(store.read_rows(IndexDF(pd.DataFrame({"id": ["b", "zz"]}))), pd.DataFrame({"id": ["b"], "v": [2]}))
    with pytest.raises(StoreError, match=r"TableStoreFiledir\(.*\) is read-only"):
        store.insert_rows(pd.DataFrame({"id": ["c"], "v": [3]}))
    with pytest.raises(ValueError, match="only be read"):
        TableStoreFiledir(f"{tmp_path}/*/{{id}}.json", JSONFile(), readonly=False)


def test_explicit_readonly_and_disabled_rm(tmp_path):
    _write_json(tmp_path / "a.json", {"v": 1})
    ro = TableStoreFiledir(f"{tmp_path}/{{id}}.json", JSONFile(), readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        ro.insert_rows(pd.DataFrame({"id": ["b"], "v": [1]}))
    keep = TableStoreFiledir(f"{tmp_path}/{{id}}.json", JSONFile())
    assert not keep.caps.supports_delete
    keep.delete_rows(IndexDF(pd.DataFrame({"id": ["a"]})))
    assert (tmp_path / "a.json").exists(), "enable_rm=False must not remove files"


def test_pattern_without_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"no \{key\} placeholder"):
        TableStoreFiledir(f"{tmp_path}/data.json", JSONFile())


def test_broken_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.json", JSONFile())
    with pytest.raises(ValueError, match="bad.json"):
        store.read_rows()


def test_bytes_file(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.bin", BytesFile(), enable_rm=True)
    store.insert_rows(pd.DataFrame({"id": ["a", "b"], "bytes": [b"\x00\x01", b"hello"]}))
    assert (tmp_path / "b.bin").read_bytes() == b"hello"
    got = store.read_rows(IndexDF(pd.DataFrame({"id": ["b"]})))
    assert got.to_dict("records") == [{"id": "b", "bytes": b"hello"}]
    assert list(store.read_rows(IndexDF(pd.DataFrame({"id": ["zz"]}))).columns) == ["id", "bytes"]


def test_pil_file(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    img = Image.new("RGB", (4, 3), (10, 20, 30))
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.png", PILFile("png"))
    store.insert_rows(pd.DataFrame({"id": ["x"], "image": [img]}))
    got = store.read_rows()["image"].iloc[0]
    assert got.size == (4, 3) and got.getpixel((1, 1)) == (10, 20, 30)
    # the hash of an image depends on its pixels, so re-reading the same file is "unchanged"
    h1 = store.hash_rows(store.read_rows())
    h2 = store.hash_rows(store.read_rows())
    assert h1.tolist() == h2.tolist()
    other = store.hash_rows(pd.DataFrame({"id": ["x"], "image": [Image.new("RGB", (4, 3), (0, 0, 0))]}))
    assert other.tolist() != h1.tolist()


def test_parquet_file(tmp_path):
    pytest.importorskip("pyarrow")
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.parquet", PandasParquetFile())
    inner = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    store.insert_rows(pd.DataFrame({"id": ["p"], "data": [inner]}))
    got = store.read_rows()
    pd.testing.assert_frame_equal(got["data"].iloc[0], inner)
    assert store.hash_rows(got).tolist() == store.hash_rows(store.read_rows()).tolist()


@pytest.mark.parametrize(
    "module, make, extra",
    [
        ("PIL", lambda: PILFile("png"), "datapipe-core[image]"),
        ("pyarrow", lambda: PandasParquetFile(), "datapipe-core[parquet]"),
        ("openpyxl", lambda: TableStoreExcel("x.xlsx"), "datapipe-core[excel]"),
    ],
)
def test_missing_optional_dependency_names_extra(monkeypatch, module, make, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")):
        make()


def test_jsonline_keeps_string_keys(tmp_path):
    store = TableStoreJsonLine(tmp_path / "t.jsonl")
    store.insert_rows(pd.DataFrame({"id": ["001", "2"], "v": [1, 2]}))
    got = store.read_rows(IndexDF(pd.DataFrame({"id": ["001"]})))
    assert got.to_dict("records") == [{"id": "001", "v": 1}]
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": "001", "v": 1}, {"id": "2", "v": 2}]


# ---------------------------------------------------------------- UpdateExternalTable over a folder


def test_update_external_table_drives_transform(dbconn, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    ds = DataStore(dbconn, create_meta_table=True)
    catalog = Catalog(
        {
            "files": Table(TableStoreFiledir(f"{folder}/{{id}}.json", JSONFile())),
            "out": Table(TableStoreDB(dbconn, "out", [Column("id", String, primary_key=True),
                                                       Column("double", Integer)], create_table=True)),
        }
    )
    calls = []

    def double(df):
        calls.append(sorted(df["id"]))
        return pd.DataFrame({"id": df["id"], "double": df["v"] * 2})

    pipeline = Pipeline([UpdateExternalTable(output="files"),
                         BatchTransform(double, inputs=["files"], outputs=["out"], chunk_size=100)])
    steps = build_compute(ds, catalog, pipeline)
    out = ds.get_table("out")

    for i in range(5):
        _write_json(folder / f"k{i}.json", {"v": i})
    run_steps(ds, steps)
    assert calls == [["k0", "k1", "k2", "k3", "k4"]]
    assert_datatable_equal(out, pd.DataFrame({"id": [f"k{i}" for i in range(5)], "double": [0, 2, 4, 6, 8]}))

    run_steps(ds, steps)
    assert len(calls) == 1, "nothing changed on disk, so nothing must be processed"

    _write_json(folder / "k1.json", {"v": 100})  # change
    _write_json(folder / "k9.json", {"v": 9})  # add
    (folder / "k3.json").unlink()  # remove
    _write_json(folder / "k4.json", {"v": 4})  # rewritten with identical content
    run_steps(ds, steps)
    assert calls[1:] == [["k1", "k9"]]
    assert_datatable_equal(
        out, pd.DataFrame({"id": ["k0", "k1", "k2", "k4", "k9"], "double": [0, 200, 4, 8, 18]})
    )
    assert ds.get_table("files").get_size() == 5
    assert (folder / "k1.json").exists() and not (folder / "k3.json").exists()


def test_bad_key_values_are_rejected(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.json", JSONFile())
    with pytest.raises(ValueError, match="may not contain '/'"):
        store.insert_rows(pd.DataFrame({"id": ["a/b"], "v": [1]}))
    with pytest.raises(ValueError, match="missing key column"):
        store.insert_rows(pd.DataFrame({"v": [1]}))
    assert list(tmp_path.iterdir()) == []


def test_datetime_keys_from_foreign_file_names(tmp_path):
    from sqlalchemy import DateTime

    _write_json(tmp_path / "2024-01-02.json", {"v": 1})
    store = TableStoreFiledir(f"{tmp_path}/{{day}}.json", JSONFile(),
                              primary_schema=[Column("day", DateTime, primary_key=True)])
    got = store.read_rows()
    assert got["day"].tolist() == [pd.Timestamp("2024-01-02")] and got["v"].tolist() == [1]


def test_registered_store_kinds(tmp_path):
    from datapipe.plugins import create_table_store

    fd = create_table_store("filedir", filename_pattern=f"{tmp_path}/fd/{{id}}.json", adapter=JSONFile())
    jl = create_table_store("jsonline", filename=tmp_path / "t.jsonl")
    assert isinstance(fd, TableStoreFiledir) and isinstance(jl, TableStoreJsonLine)
    for store in (fd, jl):
        store.insert_rows(pd.DataFrame({"id": ["a"], "v": [1]}))
        assert store.read_rows().to_dict("records") == [{"id": "a", "v": 1}]

"""File stores as datapipe 0.15 pipelines use them (issue 11, part A): suffix alternatives, what
``PILFile``/``PandasParquetFile``/``JSONFile`` accept, and single-file stores with a full schema."""

import base64
import datetime
import io

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, Date, DateTime, Integer, String

from datapipe.store.filedir import JSONFile, PandasParquetFile, PILFile, TableStoreFiledir
from datapipe.store.pandas import TableStoreExcel, TableStoreJsonLine

PIL = pytest.importorskip("PIL.Image")


def _png_bytes(color: int) -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(np.full((2, 2, 3), color, dtype=np.uint8)).save(buf, format="png")
    return buf.getvalue()


def test_suffix_alternatives_read_any_delete_any_write_first(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/img/{{id}}.(png|jpg|jpeg)", adapter=PILFile("png"), enable_rm=True)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(_png_bytes(10))  # content sniffed by Pillow, not the suffix
    (tmp_path / "img" / "b.jpeg").write_bytes(_png_bytes(20))
    store.insert_rows(pd.DataFrame({"id": ["c"], "image": [PIL.fromarray(np.full((2, 2, 3), 30, np.uint8))]}))
    assert (tmp_path / "img" / "c.png").exists()
    everything = store.read_rows()
    assert sorted(everything["id"]) == ["a", "b", "c"]
    some = store.read_rows(pd.DataFrame({"id": ["b", "a", "zz"]}))
    colors = {r.id: np.asarray(r.image)[0, 0, 0] for r in some.itertuples()}
    assert colors == {"a": 10, "b": 20}
    store.delete_rows(pd.DataFrame({"id": ["a", "c"]}))
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["b.jpeg"]


def test_pil_file_accepts_image_array_and_base64(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.png", adapter=PILFile("png"))
    array = np.full((2, 2, 3), 7, dtype=np.uint8)
    store.insert_rows(
        pd.DataFrame(
            {
                "id": ["img", "arr", "b64"],
                "image": [PIL.fromarray(array), array, base64.b64encode(_png_bytes(7)).decode()],
            }
        )
    )
    back = store.read_rows()
    for image in back["image"]:
        assert np.array_equal(np.asarray(image), array)


def test_parquet_file_with_pandas_column(tmp_path):
    pytest.importorskip("pyarrow")
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.parquet", adapter=PandasParquetFile(pandas_column="data"))
    frame = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    store.insert_rows(pd.DataFrame({"id": ["k"], "data": [frame]}))
    back = store.read_rows(pd.DataFrame({"id": ["k"]}))
    pd.testing.assert_frame_equal(back["data"].iloc[0], frame)


def test_json_file_stores_bytes_as_base64(tmp_path):
    store = TableStoreFiledir(f"{tmp_path}/{{id}}.json", adapter=JSONFile())
    store.insert_rows(pd.DataFrame({"id": ["k"], "blob": [b"\x00\xffdata"]}))
    assert (tmp_path / "k.json").read_text() == '{"blob": "' + base64.b64encode(b"\x00\xffdata").decode() + '"}'
    assert base64.b64decode(store.read_rows()["blob"].iloc[0]) == b"\x00\xffdata"


SCHEMA = [
    Column("id", Integer, primary_key=True),
    Column("name", String),
    Column("count", Integer),
    Column("day", Date),
    Column("at", DateTime),
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2],
            "name": ["a", None],
            "count": pd.array([5, None], dtype="Int64"),
            "day": [datetime.date(2024, 1, 2), datetime.date(2024, 2, 3)],
            "at": pd.to_datetime(["2024-01-02 03:04:05", "2024-02-03 04:05:06"]),
        }
    )


@pytest.mark.parametrize("kind", ["jsonline", "excel"])
def test_single_file_store_with_a_full_schema(tmp_path, kind):
    if kind == "excel":
        pytest.importorskip("openpyxl")
        store = TableStoreExcel(tmp_path / "t.xlsx", primary_schema=SCHEMA)
    else:
        store = TableStoreJsonLine(tmp_path / "t.jsonl", primary_schema=SCHEMA)
    assert store.primary_keys == ["id"]
    assert [c.name for c in store.get_schema()] == ["id", "name", "count", "day", "at"]
    empty = store.read_rows()
    assert list(empty.columns) == ["id", "name", "count", "day", "at"] and len(empty) == 0
    store.insert_rows(_frame())
    back = store.read_rows().sort_values("id").reset_index(drop=True)
    assert back["id"].dtype == "int64" and str(back["count"].dtype) == "Int64"
    assert back["count"].isna().tolist() == [False, True] and back["name"].tolist() == ["a", None]
    assert back["day"].tolist() == [datetime.date(2024, 1, 2), datetime.date(2024, 2, 3)]
    assert back["at"].tolist() == list(_frame()["at"])
    missing = store.read_rows(pd.DataFrame({"id": [99]}))
    assert list(missing.columns) == ["id", "name", "count", "day", "at"] and len(missing) == 0

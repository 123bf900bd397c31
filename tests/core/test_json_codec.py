"""datapipe.store.json_codec: the column codec of the JSON-backed stores (Redis, Elasticsearch)."""

import datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import JSON, Boolean, Column, Date, DateTime, Float, Integer, LargeBinary, String

from datapipe.store.json_codec import (
    decode_column,
    decode_frame,
    dumps,
    empty_frame,
    encode_column,
    json_arrays,
    json_objects,
    json_texts,
    loads_many,
)


def roundtrip(values, column, dtype=None):
    series = pd.Series(values, dtype=dtype)
    encoded = encode_column(series, column)
    return decode_column(loads_many([dumps(v) for v in encoded]), column)


def test_ints_stay_ints_and_nulls_become_float_like_the_sql_store():
    got = roundtrip([1, 2, 3], Column("a", Integer))
    assert got.dtype == "int64" and got.tolist() == [1, 2, 3]
    got = roundtrip([1, None, 3], Column("a", Integer), dtype="Int64")
    assert got.dtype == "float64" and got.isna().tolist() == [False, True, False]
    big = 2**62 + 1
    assert roundtrip([big], Column("a", Integer)).tolist() == [big]


def test_integral_floats_in_an_int_column_are_stored_as_ints_and_fractions_rejected():
    assert encode_column(pd.Series([1.0, 2.0]), Column("a", Integer)) == [1, 2]
    with pytest.raises(ValueError, match=r"column 'a' \(INTEGER\)"):
        encode_column(pd.Series([1.5]), Column("a", Integer))


def test_floats_exact_and_nan_as_null():
    vals = [0.1, 1 / 3, 1e300, -0.0, float("nan")]
    got = roundtrip(vals, Column("x", Float))
    assert got.dtype == "float64"
    assert got.iloc[:4].tolist() == vals[:4] and np.isnan(got.iloc[4])
    assert encode_column(pd.Series([2.0]), Column("x", Float)) == [2.0]
    assert dumps(encode_column(pd.Series([2.0]), Column("x", Float))) == "[2.0]"


def test_bools_strings_and_nulls():
    assert roundtrip([True, False], Column("b", Boolean)).dtype == bool
    assert roundtrip([True, None], Column("b", Boolean), dtype=object).tolist() == [True, None]
    got = roundtrip(["a", None, "ü€"], Column("s", String))
    assert got.iloc[0] == "a" and pd.isna(got.iloc[1]) and got.iloc[2] == "ü€"
    assert encode_column(pd.Series([1, 2]), Column("s", String)) == ["1", "2"]
    assert encode_column(pd.Series(["x", 3], dtype=object), Column("s", String)) == ["x", "3"]


def test_datetimes_dates_bytes_json():
    ts = pd.Series(pd.to_datetime(["2024-01-02 03:04:05.123456789", None]))
    got = roundtrip(ts, Column("t", DateTime))
    assert pd.api.types.is_datetime64_dtype(got) and got.iloc[0] == ts.iloc[0] and pd.isna(got.iloc[1])
    d = [datetime.date(2020, 2, 29), None]
    assert roundtrip(d, Column("d", Date), dtype=object).tolist() == d
    b = [b"\x00\xff", None]
    assert roundtrip(b, Column("b", LargeBinary), dtype=object).tolist() == b
    j = [{"a": [1, 2]}, [1, "x"], None, np.array([0.5, 1.5])]
    assert roundtrip(j, Column("j", JSON), dtype=object).tolist() == [{"a": [1, 2]}, [1, "x"], None, [0.5, 1.5]]


def test_empty_and_partial_frames_have_every_column_with_its_dtype():
    schema = [Column("id", Integer, primary_key=True), Column("x", Float), Column("t", DateTime), Column("s", String)]
    empty = empty_frame(schema)
    assert list(empty.columns) == ["id", "x", "t", "s"] and len(empty) == 0
    assert empty["id"].dtype == "int64" and empty["x"].dtype == "float64"
    assert pd.api.types.is_datetime64_dtype(empty["t"])
    part = decode_frame({"id": [1, 2], "x": [0.5, None]}, schema)
    assert list(part.columns) == ["id", "x", "t", "s"] and part["t"].isna().all() and part["s"].isna().all()


def test_loads_many_parses_in_one_call():
    assert loads_many([]) == []
    assert loads_many(['[1,"a"]', '{"x":null}', "2.5"]) == [[1, "a"], {"x": None}, 2.5]


@pytest.mark.parametrize(
    "column, values",
    [
        (Column("i", Integer), [1, -2, 2**62, None]),
        (Column("i", Integer), [0, 5]),
        (Column("f", Float), [0.1, 1e-300, -0.0, 3.0]),
        (Column("f", Float), [float("inf"), float("-inf"), None]),
        (Column("b", Boolean), [True, False]),
        (Column("b", Boolean), [True, None]),
        (Column("s", String), ['q"uote', "back\\slash", "nl\n", "ü€😀", "{}", ""]),
        (Column("s", String), ["a", None]),
        (Column("j", JSON), [{"a": [1, {"b": None}]}, [1.5, "x"], None, "s"]),
    ],
)
def test_fast_json_texts_equal_dumps(column, values):
    texts = json_texts(list(values), column)
    assert texts == [dumps(v) for v in values]
    assert loads_many(texts) == [v for v in values]


def test_json_arrays_and_objects_equal_dumps_even_with_odd_column_names():
    a, b = ["1", "2"], ['"x"', "null"]
    assert json_arrays([a, b]) == [dumps([1, "x"]), dumps([2, None])]
    names = ['we{i}rd "name"', "plain"]
    assert json_objects(names, [a, b], 2) == [dumps({names[0]: 1, "plain": "x"}), dumps({names[0]: 2, "plain": None})]
    assert json_objects([], [], 3) == ["{}", "{}", "{}"]

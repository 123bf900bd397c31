"""The bulk write and key-filter fast paths (``datapipe.sql.bulk``) on SQLite and PostgreSQL.

Values must round-trip exactly whichever path a frame takes (driver executemany, PostgreSQL
``unnest`` of array literals) and key filters must select the same rows as a plain ``IN``.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    event,
    select,
)

from datapipe.sql.bulk import UNNEST_MIN_ROWS, IntCodes, bulk_upsert
from datapipe.sql.connection import DBConn
from datapipe.sql.rows import key_filter

AWKWARD = ['a"b', "c\\d", "NULL", "", "x,y", "{z}", "ü'", None, " lead", "tab\tnew\nline"]


def _table(dbconn: DBConn, with_json: bool = False) -> Table:
    columns = [
        Column("id", Integer, primary_key=True),
        Column("f", Float),
        Column("s", String),
        Column("b", Boolean),
        Column("i", Integer),
        Column("big", BigInteger),
        Column("d", DateTime),
    ]
    if with_json:
        columns.append(Column("j", JSON))
    table = Table("bulk_t", MetaData(), *columns)
    with dbconn.con.begin() as con:
        table.create(con)
    return table


def _frame(n: int, with_json: bool = False) -> pd.DataFrame:
    ids = np.arange(n)
    df = pd.DataFrame(
        {
            "id": ids,
            "f": np.where(ids % 2 == 1, ids / 3, np.nan),
            "s": [AWKWARD[i % len(AWKWARD)] for i in ids],
            "b": pd.array([[True, None, False][i % 3] for i in ids], dtype="boolean"),
            "i": pd.array([[7, None, -3][i % 3] for i in ids], dtype="Int64"),
            "big": ids * (2**40),
            "d": [datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=int(i)) for i in ids],
        }
    )
    if with_json:
        df["j"] = [{"k": int(i), "q": 'x"y'} for i in ids]
    return df


def _read(dbconn: DBConn, table: Table) -> list:
    with dbconn.begin() as con:
        return [tuple(r) for r in con.execute(select(table).order_by(table.c.id)).fetchall()]


def _expected(df: pd.DataFrame) -> list:
    rows = []
    for r in df.to_dict("records"):
        rows.append(tuple(None if (not isinstance(v, (dict, list)) and pd.isna(v)) else v for v in r.values()))
    return rows


def _normalise(rows: list) -> list:
    return [tuple(v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in r) for r in rows]


@pytest.mark.parametrize("n", [3, UNNEST_MIN_ROWS + 7])
@pytest.mark.parametrize("with_json", [False, True])
def test_bulk_upsert_round_trips_values(dbconn: DBConn, n: int, with_json: bool) -> None:
    table = _table(dbconn, with_json)
    df = _frame(n, with_json)
    with dbconn.begin() as con:
        bulk_upsert(con, table, df, list(df.columns), ["id"])
    assert _read(dbconn, table) == _normalise(_expected(df))


@pytest.mark.parametrize("n", [3, UNNEST_MIN_ROWS + 7])
def test_bulk_upsert_updates_existing_and_inserts_new(dbconn: DBConn, n: int) -> None:
    table = _table(dbconn)
    df = _frame(n)
    with dbconn.begin() as con:
        bulk_upsert(con, table, df, list(df.columns), ["id"])
    second = _frame(n + 2).iloc[1:].assign(s="changed", f=1.5)
    with dbconn.begin() as con:
        bulk_upsert(con, table, second[["id", "s", "f"]], ["id", "s", "f"], ["id"])
    rows = {r[0]: r for r in _read(dbconn, table)}
    assert len(rows) == n + 2
    assert rows[0][2] == AWKWARD[0] and (rows[0][1] is None)  # untouched row
    assert all(rows[i][2] == "changed" and rows[i][1] == 1.5 for i in range(1, n + 2))
    assert rows[1][4] is None and rows[2][4] == -3  # columns not written keep their values
    assert rows[n + 1][4] is None  # and are NULL in new rows


def test_bulk_upsert_rolls_back_with_the_transaction(dbconn: DBConn) -> None:
    table = _table(dbconn)
    df = _frame(UNNEST_MIN_ROWS + 1)
    with pytest.raises(RuntimeError):
        with dbconn.transaction() as con:
            bulk_upsert(con, table, df, list(df.columns), ["id"])
            raise RuntimeError("boom")
    assert _read(dbconn, table) == []


@pytest.mark.parametrize(
    "keys",
    [[1, 5, 9], list(range(0, 2000, 3)), [], ["a", 'b"', "ü"], [1.0, 2.0]],
    ids=["ints", "many-ints", "empty", "strings", "floats"],
)
def test_key_filter_selects_the_same_rows_as_python(dbconn: DBConn, keys: list) -> None:
    is_str = bool(keys) and isinstance(keys[0], str)
    key_type = String if is_str else Integer
    table = Table("kf_t", MetaData(), Column("k", key_type, primary_key=True), Column("v", Integer))
    with dbconn.con.begin() as con:
        table.create(con)
    universe = ["a", 'b"', "c", "ü", "x"] if is_str else list(range(3000))
    with dbconn.begin() as con:
        con.execute(table.insert(), [{"k": k, "v": 1} for k in universe])
    idx = pd.DataFrame({"k": pd.Series(keys, dtype=object if not keys else None)})
    with dbconn.begin() as con:
        got = sorted(r[0] for r in con.execute(select(table.c.k).where(key_filter(table, idx))).fetchall())
    assert got == sorted(k for k in universe if k in set(keys))


@pytest.mark.parametrize(
    "keys",
    [[(1, "a"), (2, "b"), (9, "z")], [(i, f"k{i % 7}") for i in range(0, 1500, 2)], [(1.0, "a")]],
    ids=["few", "many", "float-fallback"],
)
def test_composite_key_filter_selects_the_same_rows_as_python(dbconn: DBConn, keys: list) -> None:
    table = Table("kf2_t", MetaData(), Column("a", Integer, primary_key=True), Column("b", String, primary_key=True))
    with dbconn.con.begin() as con:
        table.create(con)
    universe = [(i, f"k{j}") for i in range(1500) for j in (i % 7, (i + 1) % 7)] + [(1, "a"), (2, "b")]
    with dbconn.begin() as con:
        con.execute(table.insert(), [{"a": a, "b": b} for a, b in universe])
    idx = pd.DataFrame(keys, columns=["a", "b"])
    with dbconn.begin() as con:
        got = sorted(tuple(r) for r in con.execute(select(table).where(key_filter(table, idx))).fetchall())
    wanted = {(int(a), b) for a, b in keys}
    assert got == sorted(k for k in universe if k in wanted)
    with dbconn.begin() as con:
        con.execute(table.delete().where(key_filter(table, idx)))
        left = {tuple(r) for r in con.execute(select(table)).fetchall()}
    assert left == {k for k in universe if k not in wanted}


INT_KEY_SETS = {
    # (a, b, c) keys; SQLite sends the first three as one JSON array of IntCodes, the last as key rows
    "dense": [(a, b, a % 3) for a in range(40) for b in range(25)],
    "negative": [(-5, -(2**40), 7), (0, 0, 0), (3, 2**40, -7), (-5, 2**40, 7)],
    "int64 ends": [(-(2**62), 1, 0), (2**62, 0, 1)],
    "too wide for codes": [(-(2**63), 0, 0), (2**63 - 1, 1, 1), (0, 2**62, 2)],
}


@pytest.mark.parametrize("keys", list(INT_KEY_SETS.values()), ids=list(INT_KEY_SETS))
def test_integer_composite_keys_filter_and_mark_exactly(dbconn: DBConn, keys: list) -> None:
    """Composite integer keys: a key filter selects and deletes exactly the keys asked for, and rows that
    differ only in their keys (a step marking keys processed) are inserted, then updated, exactly; on
    SQLite as one statement whether or not the keys fit in ``IntCodes``."""
    table = Table(
        "ik_t", MetaData(), *[Column(c, BigInteger, primary_key=True) for c in "abc"], Column("v", Float),
        Column("s", String),
    )
    with dbconn.con.begin() as con:
        table.create(con)
    others = [(a + 1, b, c) for a, b, c in keys if a + 1 < 2**63] + [(a, b, c + 1) for a, b, c in keys]
    universe = sorted(set(keys) | set(others))
    sent = []
    event.listen(dbconn.con, "before_cursor_execute", lambda *args: sent.append((args[2], args[5])))
    for v in (1.5, 2.5):
        df = pd.DataFrame(universe, columns=["a", "b", "c"]).assign(v=v, s="x")
        with dbconn.begin() as con:
            bulk_upsert(con, table, df, ["a", "b", "c", "v", "s"], ["a", "b", "c"])
    if dbconn.is_sqlite and len(universe) >= UNNEST_MIN_ROWS:
        assert [many for sql, many in sent if "INSERT" in sql] == [False, False]
    with dbconn.begin() as con:
        assert sorted(tuple(r) for r in con.execute(select(table)).fetchall()) == [(*k, 2.5, "x") for k in universe]
    idx = pd.DataFrame(keys, columns=["a", "b", "c"])
    with dbconn.begin() as con:
        got = sorted(tuple(r[:3]) for r in con.execute(select(table).where(key_filter(table, idx))).fetchall())
    assert got == sorted(set(keys))
    with dbconn.begin() as con:
        con.execute(table.delete().where(key_filter(table, idx)))
        left = sorted(tuple(r[:3]) for r in con.execute(select(table)).fetchall())
    assert left == sorted(set(universe) - set(keys))


def test_int_codes_round_trip_and_refuse_what_does_not_fit() -> None:
    values = [[-3, 0, 7, 7], [2**40, -(2**40), 0, 1], [0, 1, 2, 1]]
    codes = IntCodes.plan(values)
    assert codes is not None
    encoded = codes.encode(values)
    assert min(encoded) >= 0 and len(set(encoded)) == 4
    decoded = [[code // w % s + low for code in encoded] for w, s, low in zip(codes.weights, codes.spans, codes.lows)]
    assert decoded == values
    assert IntCodes.plan([[0, 2**62], [0, 2]]) is None  # 2**62 + 1 values times 3: over 63 bits
    assert IntCodes.plan([[0, 1], [True, False]]) is None  # bools are not integer keys here
    assert IntCodes.plan([[0, 1], ["a", "b"]]) is None


@pytest.mark.parametrize("n", [3, UNNEST_MIN_ROWS + 7])
def test_rows_believed_new_that_exist_are_upserted(dbconn: DBConn, n: int) -> None:
    """``new=True`` is a belief: keys that exist after all are updated, in the same transaction."""
    table = _table(dbconn)
    df = _frame(n)
    with dbconn.begin() as con:
        bulk_upsert(con, table, df.iloc[: n // 2], list(df.columns), ["id"])
    changed = df.assign(s="new", f=2.5)
    with dbconn.transaction() as con:
        bulk_upsert(con, table, changed.iloc[:1], list(df.columns), ["id"])  # earlier write, same transaction
        bulk_upsert(con, table, changed, list(df.columns), ["id"], new=True)
    assert _read(dbconn, table) == _normalise(_expected(changed))


def test_rows_believed_new_are_inserted(dbconn: DBConn) -> None:
    table = _table(dbconn)
    df = _frame(UNNEST_MIN_ROWS + 7)
    with dbconn.begin() as con:
        bulk_upsert(con, table, df, list(df.columns), ["id"], new=True)
    assert _read(dbconn, table) == _normalise(_expected(df))


def test_other_integrity_errors_of_new_rows_are_raised(dbconn: DBConn) -> None:
    from sqlalchemy import UniqueConstraint
    from sqlalchemy.exc import IntegrityError

    table = Table("bulk_u", MetaData(), Column("id", Integer, primary_key=True), Column("s", String),
                  UniqueConstraint("s"))
    with dbconn.con.begin() as con:
        table.create(con)
    df = pd.DataFrame({"id": range(UNNEST_MIN_ROWS + 1), "s": ["same"] * (UNNEST_MIN_ROWS + 1)})
    with pytest.raises(IntegrityError):
        with dbconn.begin() as con:
            bulk_upsert(con, table, df, ["id", "s"], ["id"], new=True)
    assert _read(dbconn, table) == []


@pytest.mark.parametrize("new", [False, True])
@pytest.mark.parametrize("row", [0, 1, 2, 7, 9])
def test_columns_with_one_value_round_trip(dbconn: DBConn, row: int, new: bool) -> None:
    """A batch whose columns hold one value in every row (on PostgreSQL sent as single parameters, not
    arrays of copies): NULLs, awkward text, booleans, big integers, datetimes and JSON come back as written."""
    table = _table(dbconn, with_json=True)
    n = UNNEST_MIN_ROWS + 5
    one = _frame(row + 1, with_json=True).iloc[[row]]
    df = pd.concat([one] * n, ignore_index=True).assign(id=np.arange(n))
    with dbconn.begin() as con:
        bulk_upsert(con, table, df, list(df.columns), ["id"], new=new)
    assert _read(dbconn, table) == _normalise(_expected(df))
    again = df.assign(s="other", b=True)
    with dbconn.begin() as con:
        bulk_upsert(con, table, again, list(again.columns), ["id"], new=new)
    assert _read(dbconn, table) == _normalise(_expected(again))


@pytest.mark.parametrize(
    "key_type, keys",
    [
        (String, [s for s in AWKWARD if s is not None] + ["日本", "emoji 🎉"] + [f"k{i}" for i in range(20)]),
        (BigInteger, [-(2**63), 2**63 - 1, 0, -1] + list(range(10, 40))),
    ],
    ids=["str", "int64"],
)
def test_keys_with_constant_columns_round_trip(dbconn: DBConn, key_type, keys: list) -> None:
    """Rows that differ only in their key (SQLite: one ``json_each`` parameter for the keys): every key
    comes back exactly, inserted and then updated."""
    table = _keyed(dbconn, key_type)
    sent = []
    event.listen(dbconn.con, "before_cursor_execute", lambda *args: sent.append((args[2], args[5])))
    for v, s in [(1.5, None), (2.5, 'x"y')]:
        df = pd.DataFrame({"k": keys, "v": v, "s": s})
        with dbconn.begin() as con:
            bulk_upsert(con, table, df, ["k", "v", "s"], ["k"])
        if dbconn.is_sqlite:  # one statement, not executemany
            assert [many for sql, many in sent if "INSERT" in sql] == [False] and "json_each" in sent[-1][0]
            sent.clear()
        with dbconn.begin() as con:
            stored = sorted(tuple(r) for r in con.execute(select(table)).fetchall())
        assert stored == sorted((k, v, s) for k in keys)


def _keyed(dbconn: DBConn, key_type) -> Table:
    table = Table("keyed", MetaData(), Column("k", key_type, primary_key=True), Column("v", Float), Column("s", String))
    with dbconn.con.begin() as con:
        table.create(con)
    return table


def test_text_with_nul(dbconn: DBConn) -> None:
    """SQLite stores a NUL inside text as it is; PostgreSQL cannot, and the write says so and writes nothing
    (the array fast path must not split the value in two at the NUL)."""
    table = _keyed(dbconn, String)
    keys = ["nul\x00inside"] + [f"k{i}" for i in range(UNNEST_MIN_ROWS)]
    df = pd.DataFrame({"k": keys, "v": 1.0, "s": None})
    if dbconn.is_sqlite:
        with dbconn.begin() as con:
            bulk_upsert(con, table, df, ["k", "v", "s"], ["k"])
    else:
        with pytest.raises(ValueError, match="NUL"):
            with dbconn.begin() as con:
                bulk_upsert(con, table, df, ["k", "v", "s"], ["k"])
        keys = []
    with dbconn.begin() as con:
        assert sorted(r[0] for r in con.execute(select(table.c.k)).fetchall()) == sorted(keys)

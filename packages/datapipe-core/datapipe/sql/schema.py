"""Checks that keep bad rows and drifted schemas out of SQL tables, with messages naming the table.

SQLite stores any value in any column, and PostgreSQL's own errors name neither the step nor the
column clearly; so ``TableStoreDB`` checks values against the declared column types before
writing (vectorised, per column), and ``DBConn.get_table`` compares a declared table with the
one already in the database.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Column, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.schema import SchemaItem

from datapipe.sql import sqla_private

BASIC = (int, float, str)  # types compared between a declared and an existing table


class MetaKey(SchemaItem):
    """Marks a non-key column to be copied into the table's metadata table, for joins.

    A step whose transform key is a plain column of an input (``orders`` keyed by ``order_id``
    with a ``user_id`` column, in a per-user step) can map a changed row of that input to its
    key only if the column is in the metadata. Without ``MetaKey`` every change to the input
    reprocesses every key of the step, and ``build_compute`` logs a warning.

    Example:
        ```python
        TableStoreDB(dbconn, "orders", [
            Column("order_id", Integer, primary_key=True),
            Column("user_id", Integer, MetaKey()),   # orders_meta gets a user_id column
            Column("amount", Integer),
        ])
        ```
    """

    __visit_name__ = "meta_key"

    def __init__(self, target_name: Optional[str] = None) -> None:
        self.target_name = target_name

    def _set_parent(self, parent: Any, **kw: Any) -> None:  # noqa: D401 - SQLAlchemy hook
        self.parent = parent
        parent.meta_key = self


def copy_column(col: Column) -> Column:
    """A copy of ``col`` not bound to any table, keeping its ``MetaKey`` mark."""
    new = sqla_private.copy_column(col)
    if hasattr(col, "meta_key"):
        new.meta_key = col.meta_key  # type: ignore[attr-defined]
    return new


def python_type(sql_type: Any) -> Optional[type]:
    """The Python type an SQLAlchemy type holds, or None when it does not say."""
    try:
        return sql_type.python_type  # type: ignore[no-any-return]
    except (NotImplementedError, AttributeError):
        return None


def _examples(series: pd.Series, mask: np.ndarray) -> List[Any]:
    return [v for v in series[mask].head(3).tolist()]


def _check_numeric(series: pd.Series, integral: bool) -> Optional[str]:
    kind = series.dtype.kind
    if kind in "iub":
        return None
    if kind == "f":
        values = series.to_numpy()
    elif kind == "O" or isinstance(series.dtype, pd.StringDtype):
        coerced = pd.to_numeric(series, errors="coerce")
        bad = (coerced.isna() & series.notna()).to_numpy()
        if bad.any():
            return f"got non-numeric values, e.g. {_examples(series, bad)}"
        values = coerced.to_numpy(dtype=float)
    else:
        return f"got values of dtype {series.dtype}"
    if integral:
        finite = np.isfinite(values)
        bad = (~np.isnan(values) & ~finite) | (finite & (values != np.round(values)))
        if bad.any():
            return f"got non-integer values, e.g. {_examples(series, bad)}"
    return None


def _check_string(series: pd.Series, length: Optional[int]) -> Optional[str]:
    if series.dtype.kind in "iufb":
        return f"got {series.dtype} values, e.g. {series.head(3).tolist()}"
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred not in ("string", "empty"):
        return f"got {inferred} values, e.g. {series.dropna().head(3).tolist()}"
    if length is not None and len(series):
        too_long = (series.str.len() > length).to_numpy(dtype=bool, na_value=False)
        if too_long.any():
            return f"{int(too_long.sum())} value(s) longer than {length} characters"
    return None


def check_values(where: str, schema: Sequence[Column], df: pd.DataFrame) -> None:
    """Raise ``ValueError`` naming ``where`` and the column when ``df`` holds values its type cannot store."""
    for col in schema:
        name = str(col.name)
        if name not in df.columns:
            continue
        pytype = python_type(col.type)
        series = df[name]
        problem = None
        if pytype is bool:
            inferred = pd.api.types.infer_dtype(series, skipna=True)
            if series.dtype.kind not in "bO" or inferred not in ("boolean", "empty"):
                problem = f"got {inferred} values"
        elif pytype is int:
            problem = _check_numeric(series, integral=True)
        elif pytype is float:
            problem = _check_numeric(series, integral=False)
        elif pytype is str:
            problem = _check_string(series, getattr(col.type, "length", None))
        if problem:
            raise ValueError(f"{where}: column {name!r} ({col.type}) {problem}")


def check_existing_table(
    con: Connection, where: str, name: str, schema: Optional[str], declared: Sequence[Any]
) -> None:
    """Compare a declared table with the database's; raise ``ValueError`` on missing columns or changed key/types."""
    insp = inspect(con)
    if not insp.has_table(name, schema=schema):
        return
    actual = {str(c["name"]): c for c in insp.get_columns(name, schema=schema)}
    missing = [str(c.name) for c in declared if str(c.name) not in actual]
    if missing:
        raise ValueError(
            f"{where}: declared column(s) {missing} are missing in the database table (it has {list(actual)}); "
            "the schema changed since the table was created: migrate the table or restore the schema"
        )
    declared_pk = sorted(str(c.name) for c in declared if c.primary_key)
    actual_pk = sorted(insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
    if actual_pk and declared_pk != actual_pk:
        raise ValueError(f"{where}: primary key {declared_pk} is declared, but the database table has {actual_pk}")
    for c in declared:
        want, have = python_type(c.type), python_type(actual[str(c.name)]["type"])
        if want in BASIC and have in BASIC and want is not have:
            raise ValueError(
                f"{where}: column {str(c.name)!r} is declared {c.type} but is {actual[str(c.name)]['type']} "
                "in the database; the schema changed since the table was created"
            )

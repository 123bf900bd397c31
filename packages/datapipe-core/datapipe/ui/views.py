"""What the web view shows, as plain JSON-ready dicts: the graph, step status, table pages.

Nothing here knows about HTTP. Every function takes the ``DatapipeApp`` and returns dicts and
lists of JSON values, or raises ``UiError`` (a message and an HTTP status) for bad input.

Cost rules (the view must stay responsive next to a 1 M-row table):

* pending keys come from the step's change query (``get_status``), which reads only what
  changed since the step's watermark; failed keys from the partial index on failed keys;
* a table page reads ``page_size + 1`` metadata rows by an indexed order (primary key, or
  ``version`` for "last changed first": ``version`` and ``update_ts`` are set by the same write)
  and the data of those keys only; the row count is exact up to ``COUNT_CAP`` and shown as
  "at least" above it;
* every filter value is a bound parameter, converted to the column's Python type first.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
from sqlalchemy import func, select, tuple_

from datapipe.compute import ComputeStep, DatapipeApp
from datapipe.datatable import DataTable
from datapipe.errors import mask_url
from datapipe.meta.locks import step_is_running
from datapipe.sql.schema import python_type
from datapipe.store.database import TableStoreDB

COUNT_CAP = 100_000
MAX_PAGE_SIZE = 500
THUMBNAIL_PX = 96
TEXT_LIMIT = 300


class UiError(Exception):
    """Bad input or an unknown name: ``status`` is the HTTP status, the message says what to fix."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(mask_url(message))
        self.status = status


# ---------------------------------------------------------------- lookups


def find_step(app: DatapipeApp, name: str) -> ComputeStep:
    for s in app.steps:
        if s.name == name:
            return s
    raise UiError(f"unknown step {name!r}; steps: {[s.name for s in app.steps]}", 404)


def find_table(app: DatapipeApp, name: str) -> DataTable:
    if name not in app.catalog.catalog:
        raise UiError(f"unknown table {name!r}; tables: {sorted(app.catalog.catalog)}", 404)
    return app.catalog.get_datatable(app.ds, name)


def table_names(app: DatapipeApp) -> List[str]:
    """Every table of the catalog and of the steps, steps' tables in pipeline order first."""
    names: Dict[str, None] = {}
    for s in app.steps:
        for n in [ci.name for ci in s.input_dts] + [co.name for co in s.output_dts]:
            names.setdefault(n)
    for n in sorted(app.catalog.catalog):
        names.setdefault(n)
    return list(names)


def step_kind(step: ComputeStep) -> str:
    return type(step).__name__.removesuffix("Step")


def has_key_state(step: ComputeStep) -> bool:
    """Batch steps keep per-key state (pending, failed); generators and external tables do not."""
    meta = getattr(step, "meta", None)
    return meta is not None and hasattr(meta, "get_counts") and hasattr(meta, "get_failed")


# ---------------------------------------------------------------- graph and steps


def graph(app: DatapipeApp) -> Dict[str, Any]:
    """Nodes (tables and steps) and edges, as the CLI's ``graph`` command draws them. No queries."""
    tables = [{"id": f"t:{n}", "kind": "table", "name": n} for n in table_names(app)]
    steps = [
        {
            "id": f"s:{s.name}",
            "kind": "step",
            "name": s.name,
            "step_kind": step_kind(s),
            "labels": [list(label) for label in s.labels],
        }
        for s in app.steps
    ]
    edges = []
    for s in app.steps:
        edges += [{"from": f"t:{ci.name}", "to": f"s:{s.name}"} for ci in s.input_dts]
        edges += [{"from": f"s:{s.name}", "to": f"t:{co.name}"} for co in s.output_dts]
    return {"nodes": tables + steps, "edges": edges}


def step_state(step: ComputeStep, running: bool, pending: Optional[int], failed: Optional[int]) -> str:
    if running:
        return "running"
    if failed:
        return "failed"
    if pending:
        return "pending"
    if pending is None:
        return "unknown"
    return "up_to_date"


def step_status(app: DatapipeApp, step: ComputeStep, running_here: bool = False) -> Dict[str, Any]:
    """Counts and state of one step: processed, pending (change query), failed (partial index)."""
    running = running_here or step_is_running(app.ds.meta_dbconn, step.name)
    result: Dict[str, Any] = {
        "name": step.name,
        "kind": step_kind(step),
        "inputs": [ci.name for ci in step.input_dts],
        "outputs": [co.name for co in step.output_dts],
        "labels": [list(label) for label in step.labels],
        "running": running,
        "has_key_state": has_key_state(step),
        "processed": None,
        "pending": None,
        "failed": None,
    }
    if has_key_state(step):
        st = step.get_status(app.ds)
        failed = step.meta.get_counts()["failed"]  # type: ignore[attr-defined]
        result.update(processed=st.total_idx_count, pending=st.changed_idx_count, failed=failed)
        result["transform_keys"] = list(getattr(step, "transform_keys", []))
    result["state"] = step_state(step, running, result["pending"], result["failed"])
    return result


def step_errors(step: ComputeStep, limit: int = 50) -> List[Dict[str, Any]]:
    """The latest ``limit`` failed keys, grouped by error (a failed batch shares one): each group has
    the error's first line, its traceback, when it last happened and its keys. Passwords masked."""
    if not has_key_state(step):
        return []
    failed = step.meta.get_failed(limit)  # type: ignore[attr-defined]
    keys = [c for c in failed.columns if c not in ("process_ts", "error")]
    groups: Dict[str, Dict[str, Any]] = {}
    for rec in failed.to_dict("records"):
        text = mask_url(str(rec["error"] or ""))
        if text not in groups:
            message, _, trace = text.partition("\n\n")
            groups[text] = {"error": message, "traceback": trace, "at": json_value(rec["process_ts"]), "keys": []}
        groups[text]["keys"].append({k: json_value(rec[k]) for k in keys})
    return list(groups.values())


# ---------------------------------------------------------------- tables


def table_summary(app: DatapipeApp, name: str) -> Dict[str, Any]:
    dt = find_table(app, name)
    store = dt.table_store
    describe = getattr(store, "describe", None)
    columns = _data_columns(dt)
    return {
        "name": name,
        "store": mask_url(describe() if describe else type(store).__name__),
        "store_class": type(store).__name__,
        "primary_keys": dt.primary_keys,
        "columns": columns,
        "filterable": _filterable(dt),
        "rows": count_rows(dt),
        "producers": [s.name for s in app.steps if name in [co.name for co in s.output_dts]],
        "consumers": [s.name for s in app.steps if name in [ci.name for ci in s.input_dts]],
    }


def _data_columns(dt: DataTable) -> List[str]:
    try:
        schema = dt.table_store.get_schema()
    except Exception:  # noqa: BLE001 - many stores do not know their columns
        schema = []
    names = [str(c.name) for c in schema] or [*dt.primary_keys]
    return list(dict.fromkeys([*dt.primary_keys, *names]))


def _sql_data_table(dt: DataTable) -> Any:
    """The store's SQL table when it lives in the metadata database (so it can be joined), else None."""
    store = dt.table_store
    if isinstance(store, TableStoreDB) and store.in_database(dt.meta_dbconn):
        return store.data_table
    return None


def _filterable(dt: DataTable) -> List[str]:
    """Columns a table page can filter on: keys and ``MetaKey`` columns, and every column of an SQL
    store in the metadata database."""
    cols = [*dt.primary_keys, *dt.meta.meta_keys]
    data = _sql_data_table(dt)
    if data is not None:
        cols += [str(c.name) for c in data.columns]
    return list(dict.fromkeys(cols))


def count_rows(dt: DataTable, where: Sequence[Any] = (), cap: int = COUNT_CAP) -> Dict[str, Any]:
    """Live rows matching ``where``: ``{"count": n, "exact": bool}``, counting at most ``cap`` rows."""
    t = dt.meta.sql_table
    inner = select(t.c[dt.primary_keys[0]]).where(t.c.delete_ts.is_(None), *where).limit(cap + 1)
    sql = select(func.count()).select_from(inner.subquery())
    with dt.meta_dbconn.read() as con:
        n = int(con.execute(sql).scalar_one())
    return {"count": min(n, cap), "exact": n <= cap}


def parse_filters(dt: DataTable, raw: Sequence[str]) -> Dict[str, Any]:
    """``["col=value", ...]`` -> ``{col: typed value}``; raises ``UiError`` naming what is wrong."""
    allowed = _filterable(dt)
    types = {str(c.name): c.type for c in dt.meta.sql_table.columns}
    data = _sql_data_table(dt)
    if data is not None:
        for c in data.columns:
            types.setdefault(str(c.name), c.type)
    result: Dict[str, Any] = {}
    for item in raw:
        col, sep, value = item.partition("=")
        col = col.strip()
        if not sep or not col:
            raise UiError(f"filter {item!r}: expected column=value")
        if col not in allowed:
            raise UiError(f"filter {item!r}: cannot filter table {dt.name!r} on {col!r}; filterable columns: {allowed}")
        result[col] = _typed(col, value, python_type(types[col]))
    return result


def _typed(col: str, value: str, py: Optional[type]) -> Any:
    try:
        if py in (datetime.datetime, datetime.date):
            return py.fromisoformat(value)  # type: ignore[union-attr]
        if py is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "1")
        if py in (int, float):
            number = py(value)
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError("not a finite number")
            return number
    except ValueError as e:
        raise UiError(f"filter {col}={value!r}: {col!r} holds {getattr(py, '__name__', py)} values ({e})") from e
    return value


def table_page(
    app: DatapipeApp,
    name: str,
    page: int = 1,
    page_size: int = 50,
    filters: Sequence[str] = (),
    sort: str = "key",
    order: str = "asc",
    deleted: bool = False,
) -> Dict[str, Any]:
    """One page of a table's rows with their metadata; see the module docstring for the cost."""
    dt = find_table(app, name)
    if page < 1:
        raise UiError(f"page must be 1 or more, got {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise UiError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    if sort not in ("key", "update_ts"):
        raise UiError(f"sort must be 'key' or 'update_ts', got {sort!r}")
    if order not in ("asc", "desc"):
        raise UiError(f"order must be 'asc' or 'desc', got {order!r}")
    where = _where(dt, parse_filters(dt, filters))
    meta = _meta_page(dt, where, page, page_size, sort, order, deleted)
    has_next = len(meta) > page_size
    meta = meta.iloc[:page_size]
    if len(meta) == 0 and page > 1:
        raise UiError(f"page {page} is past the last row of table {name!r} (page size {page_size})", 404)
    rows = _with_data(dt, meta)
    count = count_rows(dt, where) if not deleted else None
    return {
        "table": name,
        "page": page,
        "page_size": page_size,
        "has_next": has_next,
        "columns": _row_columns(dt, rows),
        "rows": [_json_row(r) for r in rows.to_dict("records")],
        "total": count,
    }


def _where(dt: DataTable, filters: Dict[str, Any]) -> List[Any]:
    t = dt.meta.sql_table
    data = _sql_data_table(dt)
    clauses = []
    for col, value in filters.items():
        if col in t.c:
            clauses.append(t.c[col] == value)
        else:  # keys of the matching data rows: one pass over the data table, then key lookups
            matching = select(*[data.c[k] for k in dt.primary_keys]).where(data.c[col] == value)
            clauses.append(tuple_(*[t.c[k] for k in dt.primary_keys]).in_(matching))
    return clauses


def _meta_page(
    dt: DataTable, where: List[Any], page: int, page_size: int, sort: str, order: str, deleted: bool
) -> pd.DataFrame:
    t = dt.meta.sql_table
    columns = [*dt.primary_keys, "update_ts", "process_ts", "delete_ts"]
    sql = select(*[t.c[c] for c in columns]).where(*where)
    if not deleted:
        sql = sql.where(t.c.delete_ts.is_(None))
    else:
        sql = sql.where(t.c.hash.is_not(None))  # not unconfirmed-write marks
    keys = [t.c[k] for k in dt.primary_keys]
    order_cols = [t.c.version] if sort == "update_ts" else keys
    sql = sql.order_by(*[c.desc() if order == "desc" else c.asc() for c in order_cols])
    sql = sql.limit(page_size + 1).offset((page - 1) * page_size)
    with dt.meta_dbconn.read() as con:
        rows = con.execute(sql).fetchall()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _with_data(dt: DataTable, meta: pd.DataFrame) -> pd.DataFrame:
    """The page's metadata rows joined with their data (deleted rows have none)."""
    meta = meta.assign(deleted=meta["delete_ts"].notna())
    live = meta.loc[~meta["deleted"], dt.primary_keys]
    if len(live) == 0:
        return meta
    data = dt.get_data(live.reset_index(drop=True))  # type: ignore[arg-type]
    data = data.drop(columns=[c for c in ("update_ts", "process_ts", "delete_ts", "deleted") if c in data.columns])
    for k in dt.primary_keys:  # file stores may give keys another dtype than the metadata
        if k in data.columns and data[k].dtype != meta[k].dtype:
            data[k] = data[k].astype(meta[k].dtype)
    return meta.merge(data, on=dt.primary_keys, how="left", sort=False)


def _row_columns(dt: DataTable, rows: pd.DataFrame) -> List[str]:
    meta_cols = ["update_ts", "process_ts", "deleted"]
    data_cols = [c for c in rows.columns if c not in dt.primary_keys and c not in (*meta_cols, "delete_ts")]
    return [*dt.primary_keys, *data_cols, *meta_cols]


def _json_row(row: Dict[Any, Any]) -> Dict[str, Any]:
    return {str(k): json_value(v) for k, v in row.items() if k != "delete_ts"}


def json_value(value: Any) -> Any:
    """A cell as JSON: images become ``{"image": data-URI thumbnail}``, long text is cut, bytes summarised."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "thumbnail") and hasattr(value, "save"):  # a PIL image
        return {"image": _thumbnail(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no infinity
    if isinstance(value, (bool, int, float, str)):
        return _cut(value) if isinstance(value, str) else value
    if isinstance(value, (datetime.date, datetime.time)):  # pd.Timestamp and datetime too
        return value.isoformat()
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # numpy scalar
        return json_value(value.item())
    try:
        return _cut(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return _cut(str(value))


def _cut(text: str) -> str:
    text = mask_url(text)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _thumbnail(image: Any) -> str:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    if thumb.mode not in ("RGB", "RGBA", "L"):
        thumb = thumb.convert("RGBA")
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tables_overview(app: DatapipeApp) -> List[Dict[str, Any]]:
    result = []
    for name in table_names(app):
        dt = find_table(app, name)
        describe = getattr(dt.table_store, "describe", None)
        result.append(
            {
                "name": name,
                "store": mask_url(describe() if describe else type(dt.table_store).__name__),
                "rows": count_rows(dt),
            }
        )
    return result

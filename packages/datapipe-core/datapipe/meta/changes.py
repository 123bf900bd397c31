"""Which transform keys a step must process: the change query.

See ``datapipe.meta.versions`` for change versions and snapshots, and ``datapipe.meta.sql_meta``
for the watermarks. For each input ``i`` the query takes the input's changed metadata rows
(rows not visible in the watermark snapshot, or given by key for change lists), maps them to
transform keys, and, when the input holds only some of the transform keys, expands them with
the live keys of the inputs that hold the rest and with those keys the step processed before
whose other parts are no longer live (so deletions reach old outputs; a processed key whose
parts are all live is among the first expansion already, and looking it up again cost a cross
join's rerun a third of its change query). Keys whose recorded snapshot already saw the change
are dropped; keys whose last attempt failed are added. Processed keys are looked up by the
input's key columns: when those are no prefix of the step table's primary key, the step
declares an index on them (``ChangeQuery.previous_lookups``), so a change to one side of a
cross join reads only its pairs.

A full run does not fetch the keys the query returns: ``ChangeQuery.materialise`` has the
database evaluate it once and hold the result (a ``WITH HOLD`` cursor on PostgreSQL, a temporary
table on SQLite), and the run reads it back in pages; ``datapipe.sql.pages`` says why this and not
a long-open cursor. Change lists are small by nature and still fetch their keys (``fetch``). A full
run's query (``window_query``) is built once per watermark shape and reused, the watermarks bound as
parameters: building it cost as much as running it when nothing changed.

A step declared with ``transform_keys=[]`` processes all its input rows as one batch (a many-to-one
aggregate). Its only transform key is the constant ``GLOBAL_KEY`` (always 0): any changed input row
maps to it, so the step's metadata holds one row and the change query still says "nothing new"
without scanning when nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
from sqlalchemy import and_, exists, func, literal, or_, select, true, union_all
from sqlalchemy.sql import Select

from datapipe.errors import ConfigError
from datapipe.meta.sql_meta import TableMeta, TransformMeta, filter_clause
from datapipe.meta.versions import Snapshot, not_seen, snapshot_params, unseen_rows
from datapipe.sql.pages import MaterialisedRows
from datapipe.sql.rows import key_chunks, key_filter, rows_to_df


@dataclass
class InputKeys:
    """One input as the change query sees it."""

    name: str
    meta: TableMeta
    columns: Dict[str, str]  # transform key -> column of the input's metadata table
    required: bool = False


#: The single, constant transform key of a step declared with ``transform_keys=[]``.
GLOBAL_KEY = "_datapipe_all"

WhereFn = Callable[[Any], Any]  # metadata-table alias -> WHERE clause selecting changed rows


def input_key_columns(
    meta: TableMeta, transform_keys: Sequence[str], renames: Optional[Dict[str, str]]
) -> Dict[str, str]:
    """Transform keys available in an input, mapped to its metadata columns."""
    renames = renames or {}
    available = set(meta.primary_keys) | set(meta.meta_keys)
    result = {}
    for tk in transform_keys:
        col = renames.get(tk, tk)
        if col in available:
            result[tk] = col
    return result


class ChangeQuery:
    """Builds and runs the change query for one step."""

    def __init__(
        self, tr: TransformMeta, transform_keys: List[str], inputs: List[InputKeys], legacy: bool = False
    ) -> None:
        self.tr = tr
        self.keys = transform_keys
        self.inputs = inputs
        # ``legacy``: compare wall-clock ``update_ts``/``process_ts`` as metadata written before change
        # versions did; only ``datapipe.meta.upgrade`` uses it, to carry pending keys over.
        self.legacy = legacy
        self.global_batch = transform_keys == [GLOBAL_KEY]
        self._window_queries: Dict[Tuple[Any, ...], Optional[Select[Any]]] = {}
        for inp in inputs:
            self._expansion_sources(inp)  # fail at build time when a key cannot be derived

    def _expansion_sources(self, inp: InputKeys) -> List[InputKeys]:
        if self.global_batch:
            return []
        provided = set(inp.columns)
        sources = []
        for other in self.inputs:
            if other is inp or not (set(other.columns) - provided):
                continue
            sources.append(other)
            provided |= set(other.columns)
        missing = [k for k in self.keys if k not in provided]
        if missing:
            raise ConfigError(
                f"step {self.tr.name!r}: transform key(s) {missing} are not provided by any input; "
                "pass transform_keys= or map keys with InputSpec(keys=...)"
            )
        return sources

    def previous_lookups(self) -> List[List[str]]:
        """Transform-key columns by which the change query looks up the step's processed keys and that
        are no prefix of the step table's primary key: each wants an index (``StepMeta.ensure_indexes``),
        else every such lookup scans the step's whole metadata table."""
        if self.global_batch:
            return []
        result: List[List[str]] = []
        for inp in self.inputs:
            cols = [k for k in self.keys if k in inp.columns]
            if len(cols) < len(self.keys) and cols != self.keys[: len(cols)] and cols not in result:
                result.append(cols)
        return result

    def _live_keys(self, inp: InputKeys, alias: str) -> Any:
        m = inp.meta.sql_table.alias(alias)
        cols = [m.c[col].label(tk) for tk, col in inp.columns.items()]
        return select(*cols).where(m.c.delete_ts.is_(None)).distinct().subquery(alias + "_k")

    def _change_column(self, m: Any) -> Any:
        return m.c.update_ts if self.legacy else m.c.version

    def _unprocessed(self, t: Any, u: Any) -> Any:
        """SQL: the change with version (or legacy timestamp) ``u`` is new for step-meta row ``t``."""
        if self.legacy:
            return or_(t.c.process_ts.is_(None), t.c.process_ts < u)
        return not_seen(u, t.c.seen_below, t.c.seen_pending)

    def _input_parts(self, n: int, inp: InputKeys, where: WhereFn) -> List[Select[Any]]:
        m = inp.meta.sql_table.alias(f"i{n}")
        base = (
            select(*[m.c[col].label(tk) for tk, col in inp.columns.items()], self._change_column(m).label("u"))
            .where(where(m))
            .subquery(f"c{n}")
        )
        if self.global_batch:
            return [select(literal(0).label(GLOBAL_KEY), base.c.u)]
        if len(inp.columns) == len(self.keys):
            return [select(*[base.c[k] for k in self.keys], base.c.u)]
        cols = {k: base.c[k] for k in inp.columns}
        joined: Any = base
        for s, src in enumerate(self._expansion_sources(inp)):
            live = self._live_keys(src, f"e{n}_{s}")
            on = [live.c[k] == cols[k] for k in src.columns if k in cols]
            joined = joined.join(live, and_(*on) if on else true())
            for k in src.columns:
                cols.setdefault(k, live.c[k])
        expanded = select(*[cols[k].label(k) for k in self.keys], base.c.u).select_from(joined)
        t = self.tr.sql_table.alias(f"p{n}")
        on_prev = [t.c[k] == base.c[k] for k in inp.columns]
        # a processed key whose other parts are all live is a row of ``expanded`` already
        all_live = and_(*[self._is_live(src, f"x{n}_{s}", t) for s, src in enumerate(self._expansion_sources(inp))])
        previous = (
            select(*[t.c[k].label(k) for k in self.keys], base.c.u)
            .select_from(base.join(t, and_(*on_prev) if on_prev else true()))
            .where(~all_live)
        )
        return [expanded, previous]

    @staticmethod
    def _is_live(src: InputKeys, alias: str, t: Any) -> Any:
        """SQL: input ``src`` has a live row with the transform-key values of step-meta row ``t``."""
        m = src.meta.sql_table.alias(alias)
        return exists().where(m.c.delete_ts.is_(None), *[m.c[col] == t.c[tk] for tk, col in src.columns.items()])

    def build(
        self,
        wheres: Dict[int, WhereFn],
        filters: Sequence[Dict[str, Any]] = (),
        only_unprocessed: bool = True,
        include_failed: bool = True,
        order_by: Optional[List[str]] = None,
        descending: bool = False,
    ) -> Optional[Select[Any]]:
        """The query returning distinct transform keys to process; None when nothing can change."""
        parts: List[Select[Any]] = []
        for n, inp in enumerate(self.inputs):
            if n in wheres:
                parts.extend(self._input_parts(n, inp, wheres[n]))
        tr = self.tr.sql_table
        selects: List[Select[Any]] = []
        if parts:
            cand = union_all(*parts).subquery("cand")
            t = tr.alias("t")
            q = select(*[cand.c[k] for k in self.keys]).select_from(
                cand.outerjoin(t, and_(*[t.c[k] == cand.c[k] for k in self.keys]))
            )
            if only_unprocessed:
                q = q.where(self._unprocessed(t, cand.c.u))
            selects.append(q)
        if include_failed:
            selects.append(select(*[tr.c[k] for k in self.keys]).where(tr.c.is_success.is_(False)))
        if not selects:
            return None
        allc = (union_all(*selects) if len(selects) > 1 else selects[0]).subquery("allc")
        q = select(*[allc.c[k] for k in self.keys]).distinct()
        for inp in self.inputs:
            if inp.required:
                q = q.where(self._required_clause(inp, allc))
        if filters:
            clause = filter_clause({k: allc.c[k] for k in self.keys}, filters)
            if clause is not None:
                q = q.where(clause)
        order_cols = [allc.c[k] for k in (order_by or self.keys)]
        return q.order_by(*[c.desc() if descending else c.asc() for c in order_cols])

    def window_query(
        self,
        marks: Mapping[str, Snapshot],
        filters: Sequence[Dict[str, Any]] = (),
        order_by: Optional[List[str]] = None,
        descending: bool = False,
    ) -> Tuple[Optional[Select[Any]], Dict[str, Any]]:
        """The change query of a full run (rows not visible in the watermarks ``marks``) and the values
        of its parameters, to execute it with.

        Building a change query and computing SQLAlchemy's cache key for it cost about a millisecond,
        as much as running it when nothing changed. So without ``filters`` (whose values are part of the
        statement) the statement is built once per shape (which inputs have a watermark and which of
        those have pending ids, and the order) and reused, the watermarks given as parameters.
        """
        if filters:
            return self.build(self.window_wheres(marks), filters=filters, order_by=order_by,
                              descending=descending), {}
        shapes = tuple((m is not None, bool(m and m.pending)) for m in (marks.get(i.name) for i in self.inputs))
        key = (shapes, tuple(order_by or ()), descending)
        if key not in self._window_queries:
            self._window_queries[key] = self.build(self.window_wheres(marks, named=True), order_by=order_by,
                                                   descending=descending)
        params: Dict[str, Any] = {}
        for n, inp in enumerate(self.inputs):
            params.update(snapshot_params(f"w{n}", marks.get(inp.name)))
        return self._window_queries[key], params

    def _required_clause(self, inp: InputKeys, allc: Any) -> Any:
        """Keys present in a ``Required`` input, or processed before (their outputs may need deleting)."""
        m = inp.meta.sql_table.alias(f"r_{inp.name}")
        present = exists().where(
            and_(m.c.delete_ts.is_(None), *[m.c[col] == allc.c[tk] for tk, col in inp.columns.items()])
        )
        t = self.tr.sql_table.alias(f"rt_{inp.name}")
        processed = exists().where(and_(*[t.c[k] == allc.c[k] for k in self.keys]))
        return or_(present, processed)

    def count(self, query: Optional[Select[Any]]) -> int:
        """How many keys ``query`` returns, counted in the database (no rows are transferred)."""
        if query is None:
            return 0
        with self.tr.dbconn.read() as con:
            return int(con.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one())

    def materialise(
        self,
        query: Optional[Select[Any]],
        page_rows: Optional[int] = None,
        params: Optional[Dict[str, Any]] = None,
        small_expected: bool = False,
    ) -> MaterialisedRows:
        """The keys ``query`` (with parameter values ``params``) returns, evaluated once and held by the
        database, to be read back in pages of ``page_rows`` (``datapipe.sql.pages``; with
        ``small_expected``, a result of one page may be held in memory instead); open it with ``with``
        or ``open()``."""
        types = [self.tr.sql_table.c[k].type for k in self.keys]
        return MaterialisedRows(self.tr.dbconn, query, self.keys, types, page_rows, params, small_expected)

    def fetch(self, query: Optional[Select[Any]], params: Optional[Dict[str, Any]] = None) -> pd.DataFrame:
        if query is None:
            return rows_to_df([], self.keys)
        with self.tr.dbconn.read() as con:
            return rows_to_df(con.execute(query, params or {}).fetchall(), self.keys)

    # ------------------------------------------------------------ the two ways of finding changes

    def window_wheres(self, marks: Mapping[str, Snapshot], named: bool = False) -> Dict[int, WhereFn]:
        """Changed rows per input: those not visible in the input's watermark snapshot (all without one);
        with ``named``, the snapshots are parameters ``w<n>_...`` (``snapshot_params``)."""
        wheres: Dict[int, WhereFn] = {}
        for n, inp in enumerate(self.inputs):

            def where(m: Any, mark: Optional[Snapshot] = marks.get(inp.name), n: int = n) -> Any:
                if self.legacy:
                    return m.c.update_ts.is_not(None)
                return unseen_rows(m.c.version, mark, f"w{n}" if named else None)

            wheres[n] = where
        return wheres

    def changelist_wheres(self, changes: Mapping[str, pd.DataFrame]) -> Dict[int, WhereFn]:
        """Changed rows given by key, per input name."""
        wheres: Dict[int, WhereFn] = {}
        for n, inp in enumerate(self.inputs):
            idx = changes.get(inp.name)
            if idx is None or len(idx) == 0:
                continue
            keys = idx[[k for k in inp.meta.primary_keys if k in idx.columns]].drop_duplicates()

            def where(m: Any, keys: pd.DataFrame = keys) -> Any:
                return or_(*[key_filter(m, chunk) for chunk in key_chunks(keys)]) if len(keys) else literal(False)

            wheres[n] = where
        return wheres

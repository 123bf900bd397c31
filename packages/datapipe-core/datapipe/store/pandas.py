"""Single-file tables: JSON lines (``TableStoreJsonLine``) and Excel (``TableStoreExcel``).

The whole table lives in one file, read and rewritten as a whole on every write; good for small
reference tables and exchanging data with people, not for large tables. Files may be local paths
or fsspec URLs. Key columns are converted to the types of ``primary_schema`` on read (default: one
``id`` String key).
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any, Dict, Optional, Union

import fsspec
import pandas as pd

from datapipe.store.table_store import StoreError, TableDataSingleFileStore, TableStoreCaps
from datapipe.types import DataSchema

_CAPS = TableStoreCaps(supports_get_schema=False)


def cast_key_columns(df: pd.DataFrame, schema: DataSchema) -> pd.DataFrame:
    """``df`` with the columns of ``schema`` (added when missing) converted to their declared types.

    Integers with nulls become pandas' nullable ``Int64``; ``Date`` columns hold ``datetime.date``
    values, ``DateTime`` columns datetime64; strings keep nulls as None.
    """
    for col in schema:
        name = str(col.name)
        if name not in df.columns:
            df[name] = pd.Series([None] * len(df), dtype=object, index=df.index)
        python_type = _python_type(col)
        if python_type is not None:
            df[name] = _cast(df[name], python_type)
    return df


def _cast(values: pd.Series, python_type: Any) -> pd.Series:
    if python_type is int:
        numbers = pd.to_numeric(values)
        return numbers.astype("Int64" if numbers.isna().any() else "int64")
    if python_type is float:
        return pd.to_numeric(values).astype("float64")
    if python_type is bool:
        return values.astype("boolean" if values.isna().any() else bool)
    if python_type is str:
        present = values.notna()
        out = values.astype(object).where(present, None)
        out[present] = values[present].astype(str)
        return out
    if python_type is datetime.datetime:
        return pd.to_datetime(values)
    if python_type is datetime.date:
        stamps = pd.to_datetime(values)
        return stamps.dt.date.astype(object).where(stamps.notna(), None)
    return values


class _FsspecSingleFile(TableDataSingleFileStore):
    """Shared file access: read the bytes (None when missing), replace the file atomically."""

    caps = _CAPS

    def __init__(self, filename: Union[str, Path], primary_schema: Optional[DataSchema] = None) -> None:
        super().__init__(filename, primary_schema)
        self.fs, self.path = fsspec.core.url_to_fs(self.filename)

    def __getstate__(self) -> Dict[str, Any]:
        return {"filename": self.filename, "primary_schema": self.declared_schema}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _read_bytes(self) -> Optional[bytes]:
        try:
            return bytes(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self.describe()}: reading failed: {e}") from e

    def _write_bytes(self, content: bytes) -> None:
        tmp = f"{self.path}.tmp"
        try:
            parent = self.fs._parent(self.path)
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, content)
            self.fs.mv(tmp, self.path)
        except OSError as e:
            raise StoreError(f"{self.describe()}: writing failed: {e}") from e

    def _with_keys_first(self, df: pd.DataFrame) -> pd.DataFrame:
        df = cast_key_columns(df, self.declared_schema)
        return df[self.primary_keys + [c for c in df.columns if c not in self.primary_keys]]

    def empty_frame(self) -> pd.DataFrame:
        return self._with_keys_first(pd.DataFrame())


class TableStoreJsonLine(_FsspecSingleFile):
    """A table in one JSON-lines file (one JSON object per row).

    The whole file is read and rewritten on each access, so it suits small tables, such as a
    catalogue edited by hand and scanned by ``UpdateExternalTable`` (the quickstart).

    Args:
        filename: a local path or an fsspec URL; a missing file is an empty table.
        primary_schema: the key ``Column``s (``primary_key=True``); the other fields of each
            object are the data columns.
    """

    def load_file(self) -> Optional[pd.DataFrame]:
        content = self._read_bytes()
        if content is None:
            return None
        if not content.strip():
            return self._with_keys_first(pd.DataFrame())
        try:
            df = pd.read_json(io.BytesIO(content), lines=True, orient="records", dtype=False)
        except ValueError as e:
            raise ValueError(f"{self.describe()}: not a JSON-lines file: {e}") from e
        return self._with_keys_first(df)

    def save_file(self, df: pd.DataFrame) -> None:
        text = df.to_json(orient="records", lines=True, date_format="iso", force_ascii=False) if len(df) else ""
        self._write_bytes(text.encode())


class TableStoreExcel(_FsspecSingleFile):
    """A table in one Excel sheet (needs the ``excel`` extra: ``pip install 'datapipe-core[excel]'``)."""

    def __init__(self, filename: Union[str, Path], primary_schema: Optional[DataSchema] = None) -> None:
        try:
            import openpyxl  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"TableStoreExcel needs openpyxl, which is not installed ({e}); "
                "install it with: pip install 'datapipe-core[excel]'"
            ) from None
        super().__init__(filename, primary_schema)

    def load_file(self) -> Optional[pd.DataFrame]:
        content = self._read_bytes()
        if content is None:
            return None
        str_keys = {str(c.name): str for c in self.declared_schema if _python_type(c) is str}
        df = pd.read_excel(io.BytesIO(content), engine="openpyxl", dtype=str_keys)
        return self._with_keys_first(df)

    def save_file(self, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        df.to_excel(buf, index=False, engine="openpyxl")
        self._write_bytes(buf.getvalue())


def _python_type(col: Any) -> Any:
    try:
        return col.type.python_type
    except NotImplementedError:
        return None

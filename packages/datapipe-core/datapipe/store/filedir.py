"""Tables stored as one file per row, in a folder on any fsspec filesystem.

``TableStoreFiledir("data/{id}.json", JSONFile())`` keeps row ``id=7`` in ``data/7.json``.
The primary keys are the ``{names}`` in the pattern (String columns unless ``primary_schema`` says
otherwise); an adapter turns a file into the row's data columns and back:

* ``JSONFile()``: the file is a JSON object whose fields are the data columns;
* ``BytesFile()``: a ``bytes`` column with the raw content;
* ``PILFile(format)``: an ``image`` column with a ``PIL.Image`` (extra ``datapipe-core[image]``);
* ``PandasParquetFile()``: a ``data`` column with a DataFrame (extra ``datapipe-core[parquet]``).

``JSONFile`` writes bytes values as base64 text; ``PILFile`` also accepts numpy arrays and base64
strings of image files. A ``(png|jpg|jpeg)`` group in the pattern lists alternative spellings:
reads find a file under any of them (the first listed wins when several exist), deletes remove
whichever exists, writes use the first.

Key values are written into file names with ``str()`` (DateTime keys as ``2024-01-02T03-04-05.000000``)
and must not contain ``/``. Patterns may hold several keys (``{a}/{b}.json``), fsspec URLs (``memory://``, ``file://``, ``s3://``)
or local paths. A ``*`` in the pattern matches any text and makes the store read-only (the store
cannot know where to write). Reads list the folder with one ``glob`` and fetch the files with one
``cat`` call; writes use one ``pipe`` call per batch.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterator, List, Optional

import fsspec
import numpy as np
import pandas as pd
from sqlalchemy import Column, String

from datapipe import keyset
from datapipe.run_config import RunConfig
from datapipe.store.table_store import StoreError, TableStore, TableStoreCaps
from datapipe.types import DataDF, DataSchema, IndexDF

_KEY_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ALT_RE = re.compile(r"\(([^()/|]+(?:\|[^()/|]+)+)\)")  # (png|jpg|jpeg)
# DateTime keys in file names: no ':' (not allowed on Windows and some object stores)
_DATETIME_KEY_FORMAT = "%Y-%m-%dT%H-%M-%S.%f"


def _missing_extra(adapter: str, package: str, extra: str, error: ImportError) -> ImportError:
    return ImportError(
        f"{adapter} needs {package}, which is not installed ({error}); "
        f"install it with: pip install 'datapipe-core[{extra}]'"
    )


class FileAdapter(ABC):
    """Converts between a file's bytes and a row's data columns."""

    @abstractmethod
    def load(self, content: bytes) -> Dict[str, Any]:
        """Return the data columns of one row from the file's ``content``; called for every file read."""

    @abstractmethod
    def dump(self, row: Dict[str, Any]) -> bytes:
        """Return the file content for one row's data columns (keys are not included)."""

    def data_columns(self) -> List[str]:
        """Columns every row has (used for empty reads); ``[]`` when the files decide."""
        return []

    def hashable(self, value: Any) -> Any:
        """A value with a stable ``repr``/hash standing for ``value`` (used to detect changed rows)."""
        return value


class JSONFile(FileAdapter):
    """One JSON object per file; its fields are the data columns."""

    def load(self, content: bytes) -> Dict[str, Any]:
        data = json.loads(content)
        if not isinstance(data, dict):
            raise ValueError(f"JSONFile expects a JSON object, got {type(data).__name__}")
        return data

    def dump(self, row: Dict[str, Any]) -> bytes:
        return json.dumps(row, ensure_ascii=False, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")  # as datapipe 0.15: bytes as base64 text
    raise TypeError(f"JSONFile cannot store a {type(value).__name__}")


class BytesFile(FileAdapter):
    """Raw file content in a ``bytes`` column (name configurable)."""

    def __init__(self, column: str = "bytes") -> None:
        self.column = column

    def load(self, content: bytes) -> Dict[str, Any]:
        return {self.column: content}

    def dump(self, row: Dict[str, Any]) -> bytes:
        return bytes(row[self.column])

    def data_columns(self) -> List[str]:
        return [self.column]


class PILFile(FileAdapter):
    """An image in an ``image`` column as a ``PIL.Image``; written in ``format`` (``"png"``, ``"jpeg"``...)."""

    def __init__(self, format: str, column: str = "image") -> None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError as e:
            raise _missing_extra("PILFile", "Pillow", "image", e) from None
        self.format = format
        self.column = column

    def load(self, content: bytes) -> Dict[str, Any]:
        from PIL import Image

        image = Image.open(io.BytesIO(content))
        image.load()
        return {self.column: image}

    def dump(self, row: Dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        self.to_image(row[self.column]).save(buf, format=self.format)
        return buf.getvalue()

    @staticmethod
    def to_image(value: Any) -> Any:
        """A ``PIL.Image`` from an image, a numpy array (``Image.fromarray``) or a base64 string of an
        encoded image file (what datapipe 0.15 accepted)."""
        from PIL import Image

        if isinstance(value, np.ndarray):
            return Image.fromarray(value)
        if isinstance(value, str):
            return Image.open(io.BytesIO(base64.b64decode(value)))
        if isinstance(value, (bytes, bytearray)):
            return Image.open(io.BytesIO(bytes(value)))
        return value

    def data_columns(self) -> List[str]:
        return [self.column]

    def hashable(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return f"ndarray:{value.dtype.str}:{value.shape}:{value.tobytes().hex()}"
        if hasattr(value, "mode") and hasattr(value, "tobytes"):
            return f"{value.mode}:{value.size}:{value.tobytes().hex()}"
        return value


class PandasParquetFile(FileAdapter):
    """A whole DataFrame per file (parquet) in a ``data`` column."""

    def __init__(self, column: str = "data", pandas_column: Optional[str] = None) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise _missing_extra("PandasParquetFile", "pyarrow", "parquet", e) from None
        self.column = pandas_column or column  # ``pandas_column`` is datapipe 0.15's name

    def load(self, content: bytes) -> Dict[str, Any]:
        return {self.column: pd.read_parquet(io.BytesIO(content))}

    def dump(self, row: Dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        row[self.column].to_parquet(buf)
        return buf.getvalue()

    def data_columns(self) -> List[str]:
        return [self.column]

    def hashable(self, value: Any) -> Any:
        if isinstance(value, pd.DataFrame):
            hashed = pd.util.hash_pandas_object(value, index=True).to_numpy()
            return f"df:{list(value.columns)}:{hashed.tobytes().hex()}"
        return value


def _literal_regex(literal: str) -> str:
    """Regex for a literal part of a pattern: ``*`` matches any text, ``(a|b)`` either alternative."""
    out, last = "", 0
    for m in _ALT_RE.finditer(literal):
        out += re.escape(literal[last : m.start()]).replace(r"\*", "[^/]*")
        out += "(?:" + "|".join(re.escape(a) for a in m.group(1).split("|")) + ")"
        last = m.end()
    return out + re.escape(literal[last:]).replace(r"\*", "[^/]*")


def _substitute(literals: List[str], picks: Iterator[str]) -> List[str]:
    """``literals`` with each ``(a|b)`` group replaced by the next of ``picks``."""
    return [_ALT_RE.sub(lambda _m: next(picks), lit) for lit in literals]


class _Pattern:
    """A filename pattern split into literal parts and ``{key}`` names.

    ``(png|jpg)`` groups in literal parts are alternatives: reads accept any of them, writes use
    the first. ``variants`` are the literal parts for each combination, the writing one first.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = _KEY_RE.findall(path)
        self.literals = _KEY_RE.split(path)[::2]
        self.has_wildcard = "*" in path
        self.glob = _ALT_RE.sub("*", _KEY_RE.sub("*", path))
        choices = [m.split("|") for lit in self.literals for m in _ALT_RE.findall(lit)]
        self.variants: List[List[str]] = []
        for combo in itertools.product(*choices):
            self.variants.append(_substitute(self.literals, iter(combo)))
        regex = ""
        for i, lit in enumerate(self.literals):
            regex += _literal_regex(lit)
            if i < len(self.keys):
                regex += f"(?P<{self.keys[i]}>[^/]+?)"
        self.regex = re.compile(regex + "$")

    def parse(self, paths: List[str]) -> pd.DataFrame:
        """Key values (strings) of ``paths`` plus a ``__path`` column; paths that do not match are left out."""
        keys = list(dict.fromkeys(self.keys))
        if not paths:
            return keyset.empty([*keys, "__path"])
        series = pd.Series(paths, dtype=object)
        found = series.str.extract(self.regex.pattern)
        found["__path"] = series
        return found.dropna().reset_index(drop=True)

    def format(self, idx: pd.DataFrame, variant: int = 0) -> pd.Series:
        """The path of every row of ``idx`` (vectorised string concatenation); ``variant`` picks the
        alternatives (0: the first of each, used for writing)."""
        literals = self.variants[variant]
        out = pd.Series([literals[0]] * len(idx), index=idx.index, dtype=object)
        for key, lit in zip(self.keys, literals[1:]):
            out = out + _key_text(idx[key]) + lit
        return out


def _key_text(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.strftime(_DATETIME_KEY_FORMAT)
    return col.astype(str)


class TableStoreFiledir(TableStore):
    """One file per row under ``filename_pattern`` (see the module docstring).

    ``add_filepath_column`` adds a ``filepath`` column on read; ``read_data=False`` reads only the keys
    (and ``filepath``); ``readonly`` defaults to True when the pattern has ``*``; ``enable_rm`` makes
    ``delete_rows`` remove files (otherwise deletes only affect metadata); ``fsspec_kwargs`` are passed
    to the filesystem (credentials, options).
    """

    def __init__(
        self,
        filename_pattern: str,
        adapter: FileAdapter,
        add_filepath_column: bool = False,
        primary_schema: Optional[DataSchema] = None,
        read_data: bool = True,
        readonly: Optional[bool] = None,
        enable_rm: bool = False,
        fsspec_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.filename_pattern = str(filename_pattern)
        self.adapter = adapter
        self.add_filepath_column = add_filepath_column
        self.read_data = read_data
        self.enable_rm = enable_rm
        self.fsspec_kwargs = dict(fsspec_kwargs or {})
        self.fs, path = fsspec.core.url_to_fs(self.filename_pattern, **self.fsspec_kwargs)
        self.pattern = _Pattern(path)
        if not self.pattern.keys:
            raise ValueError(
                f"TableStoreFiledir({self.filename_pattern!r}): the filename pattern has no {{key}} placeholder; "
                "use e.g. 'folder/{id}.json'"
            )
        if readonly is None:
            readonly = self.pattern.has_wildcard
        elif not readonly and self.pattern.has_wildcard:
            raise ValueError(f"{self.describe()}: a pattern with '*' can only be read (readonly=False is impossible)")
        self.readonly = readonly
        self.primary_schema = primary_schema or [Column(k, String, primary_key=True) for k in self.pattern.keys]
        names = [str(c.name) for c in self.primary_schema]
        if sorted(names) != sorted(set(self.pattern.keys)):
            raise ValueError(
                f"{self.describe()}: primary_schema columns {names} must be the pattern keys {self.pattern.keys}"
            )
        self.caps = TableStoreCaps(
            supports_delete=enable_rm and not readonly,
            supports_get_schema=False,
            supports_read_all_rows=True,
            supports_read_nonexistent_rows=True,
            supports_read_meta_pseudo_df=True,
        )

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("fs")
        state.pop("pattern")
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fs, path = fsspec.core.url_to_fs(self.filename_pattern, **self.fsspec_kwargs)
        self.pattern = _Pattern(path)

    def describe(self) -> str:
        return f"TableStoreFiledir({self.filename_pattern!r})"

    def get_primary_schema(self) -> DataSchema:
        return self.primary_schema

    # ------------------------------------------------------------------ keys and paths

    def _cast_keys(self, df: pd.DataFrame) -> pd.DataFrame:
        """Key columns parsed from file names (strings) converted to the primary schema's types."""
        for col in self.primary_schema:
            name = str(col.name)
            try:
                python_type = col.type.python_type
            except NotImplementedError:
                continue
            if python_type is int:
                df[name] = pd.to_numeric(df[name]).astype("int64")
            elif python_type is float:
                df[name] = pd.to_numeric(df[name]).astype("float64")
            elif python_type.__name__ == "datetime":
                try:
                    df[name] = pd.to_datetime(df[name], format=_DATETIME_KEY_FORMAT)
                except ValueError:  # files named by someone else, e.g. 2024-01-02
                    df[name] = pd.to_datetime(df[name])
        return df

    def _paths(self, idx: pd.DataFrame, variant: int = 0) -> pd.Series:
        missing = [k for k in self.primary_keys if k not in idx.columns]
        if missing:
            raise ValueError(f"{self.describe()}: rows are missing key column(s) {missing}")
        for key in self.primary_keys:
            if idx[key].isna().any():
                raise ValueError(f"{self.describe()}: null values in key column {key!r}")
            text = _key_text(idx[key])
            bad = text.str.contains("/", regex=False)
            if bad.any():
                raise ValueError(
                    f"{self.describe()}: key {key!r} values may not contain '/', got {text[bad].iloc[0]!r}"
                )
        return self.pattern.format(idx, variant)

    def _candidate_paths(self, idx: pd.DataFrame) -> pd.DataFrame:
        """``idx`` with a ``__path`` column, one row per alternative path of each key (writing one first)."""
        keys = idx.reset_index(drop=True)
        parts = [keys.assign(__path=self._paths(keys, v).to_numpy()) for v in range(len(self.pattern.variants))]
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)

    def _list(self) -> pd.DataFrame:
        """Every file matching the pattern: typed key columns + ``__path`` (one glob)."""
        try:
            found = self.fs.glob(self.pattern.glob, detail=True)
            paths = sorted(p for p, info in found.items() if info.get("type") != "directory")
        except FileNotFoundError:
            paths = []
        except OSError as e:
            raise StoreError(f"{self.describe()}: listing files failed: {e}") from e
        return self._cast_keys(self.pattern.parse(paths))

    def _public_path(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local"):
            return path
        return str(self.fs.unstrip_protocol(path))

    # ------------------------------------------------------------------ reads

    def _empty(self) -> pd.DataFrame:
        cols = list(self.primary_keys)
        if self.read_data:
            cols += self.adapter.data_columns()
        if self.add_filepath_column:
            cols.append("filepath")
        return self._cast_keys(keyset.empty(list(dict.fromkeys(cols))))

    def _load(self, listing: pd.DataFrame) -> DataDF:
        """Rows for the files of ``listing`` (key columns + ``__path``); missing files are left out."""
        if len(listing) == 0:
            return DataDF(self._empty())
        listing = listing.reset_index(drop=True)
        out = listing[self.primary_keys].copy()
        if self.read_data:
            paths = listing["__path"].tolist()
            try:
                contents = self.fs.cat(paths, on_error="omit")
            except OSError as e:
                raise StoreError(f"{self.describe()}: reading files failed: {e}") from e
            contents = {self.fs._strip_protocol(k): v for k, v in contents.items()}
            present = listing["__path"].map(lambda p: p in contents).to_numpy(dtype=bool)
            listing, out = listing[present].reset_index(drop=True), out[present].reset_index(drop=True)
            first = ~listing.duplicated(self.primary_keys).to_numpy()  # a key with files of several suffixes
            listing, out = listing[first].reset_index(drop=True), out[first].reset_index(drop=True)
            rows = [self._decode(p, contents[p]) for p in listing["__path"]]
            data = pd.DataFrame.from_records(rows, index=out.index) if rows else pd.DataFrame(index=out.index)
            data = data.drop(columns=[c for c in data.columns if c in out.columns or c == "filepath"])
            for c in self.adapter.data_columns():
                if c not in data.columns:
                    data[c] = None
            out = pd.concat([out, data], axis=1)
        if self.add_filepath_column:
            out["filepath"] = listing["__path"].map(self._public_path).to_numpy()
        if len(out) == 0:
            return DataDF(self._empty())
        return DataDF(out)

    def _decode(self, path: str, content: bytes) -> Dict[str, Any]:
        try:
            return self.adapter.load(content)
        except Exception as e:  # noqa: BLE001 - name the file that could not be decoded
            raise ValueError(f"{self.describe()}: cannot read {path}: {type(e).__name__}: {e}") from e

    def read_rows(self, idx: Optional[IndexDF] = None) -> DataDF:
        if idx is None:
            return self._load(self._list())
        if len(idx) == 0:
            return DataDF(self._empty())
        keys = idx[self.primary_keys].drop_duplicates()
        if self.pattern.has_wildcard or not self.read_data:
            listing = self._list()
            return self._load(listing.merge(self._typed(keys), on=self.primary_keys, how="inner"))
        listing = self._candidate_paths(keys)
        listing["__path"] = listing["__path"].map(self.fs._strip_protocol)
        return self._load(listing)

    def _typed(self, keys: pd.DataFrame) -> pd.DataFrame:
        """``keys`` with the key dtypes used by listings, so merges compare like with like."""
        return self._cast_keys(keys.astype({k: object for k in self.primary_keys}).copy())

    def read_rows_meta_pseudo_df(
        self, chunksize: int = 1000, run_config: Optional[RunConfig] = None
    ) -> Iterator[DataDF]:
        listing = self._list()
        if len(listing) == 0:
            yield DataDF(self._empty())
            return
        for start in range(0, len(listing), chunksize):
            yield self._load(listing.iloc[start : start + chunksize])

    def hash_rows(self, df: DataDF) -> pd.Series:
        from datapipe.hashing import hash_rows

        cols = [c for c in self.adapter.data_columns() if c in df.columns]
        if cols:
            df = DataDF(df.assign(**{c: df[c].map(self.adapter.hashable) for c in cols}))
        return hash_rows(df, self.primary_keys)

    # ------------------------------------------------------------------ writes

    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"{self.describe()} is read-only, cannot {what}")

    def insert_rows(self, df: DataDF) -> None:
        if len(df) == 0:
            return
        self._check_writable("write rows")
        paths = self._paths(df)
        data_cols = [c for c in df.columns if c not in self.primary_keys and c != "filepath"]
        records = df[data_cols].astype(object).where(df[data_cols].notna(), None).to_dict("records")
        files: Dict[str, bytes] = {}
        for path, row in zip(paths, records):
            try:
                files[path] = self.adapter.dump(row)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{self.describe()}: cannot write {path}: {type(e).__name__}: {e}") from e
        try:
            for parent in {self.fs._parent(p) for p in files}:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe(files)
        except OSError as e:
            raise StoreError(f"{self.describe()}: writing files failed: {e}") from e

    def delete_rows(self, idx: IndexDF) -> None:
        """Remove the files of ``idx`` when ``enable_rm``; otherwise do nothing (files stay)."""
        if len(idx) == 0 or not self.enable_rm:
            return
        self._check_writable("delete rows")
        paths = self._candidate_paths(idx[self.primary_keys])["__path"].tolist()
        try:
            if getattr(self.fs, "async_impl", False) and len(self.pattern.variants) == 1:
                self.fs.rm(paths)  # remote object stores delete a whole list in few requests
            else:
                self._rm_each(paths)
        except OSError as e:
            raise StoreError(f"{self.describe()}: deleting files failed: {e}") from e

    def _rm_each(self, paths: List[str]) -> None:
        """Local-like filesystems: one unlink per file, missing files ignored (``fs.rm`` stats every path)."""
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

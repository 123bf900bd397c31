"""`datapipe db adopt` against databases written by the real datapipe-core 0.15.0.

Each test builds a 0.15 deployment with ``build_015.py`` (run by the 0.15 virtualenv named by
``DATAPIPE_015_PYTHON``; the ``adopt`` nox session creates it), on SQLite and on PostgreSQL, then
drives our package in separate processes: the ``datapipe`` CLI and ``ours.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from sqlalchemy import create_engine, inspect, text

from datapipe.tests.services import in_ci

HERE = Path(__file__).parent
RECORDS = int(os.environ.get("ADOPT_RECORDS", "1000"))
BATCH_STEPS = {"double_e30557cf08", "explode_tags_808474b2eb", "count_tags"}  # names 0.15 gave them
NOTHING = {name: 0 for name in BATCH_STEPS}
EDITED = {"double_e30557cf08": 1, "explode_tags_808474b2eb": 1, "count_tags": 2}  # item, its tags: old + new


def _python_015() -> str:
    path = os.environ.get("DATAPIPE_015_PYTHON")
    if not path or not Path(path).exists():
        message = "DATAPIPE_015_PYTHON (a python with datapipe-core==0.15.0) is not set; run `nox -s adopt`"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


def _run(python: str, url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADOPT_DB_URL": url}
    proc = subprocess.run([python, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    datapipe = str(Path(sys.executable).parent / "datapipe")
    return _run(datapipe, url, "--pipeline", "pipeline:app", *args, check=check)


def ours(url: str, *args: str) -> str:
    return _run(sys.executable, url, "ours.py", *args).stdout


def run_counts(url: str) -> Dict[str, int]:
    return dict(json.loads(ours(url, "run")))


def dump(url: str) -> Dict[str, Any]:
    """Every table of the database: columns, indexes and sorted rows."""
    engine = create_engine(_sqlalchemy_url(url))
    result: Dict[str, Any] = {}
    with engine.connect() as con:
        insp = inspect(con)
        for name in sorted(insp.get_table_names()):
            cols = [c["name"] for c in insp.get_columns(name)]
            rows = con.execute(text(f'SELECT * FROM "{name}"')).fetchall()
            indexes = sorted(i["name"] or "" for i in insp.get_indexes(name))
            result[name] = {"columns": cols, "indexes": indexes, "rows": sorted(map(repr, rows))}
    engine.dispose()
    return result


def timestamps(url: str, *, process_ts: bool = True) -> Dict[str, List[str]]:
    """Keys and wall-clock columns of every metadata table (``update_ts`` always, ``process_ts`` if asked)."""
    skip = {"hash", "version", "seen_below", "seen_pending", *(() if process_ts else ("process_ts",))}
    out = {}
    for name, t in dump(url).items():
        if name.endswith("_meta"):
            keep = [i for i, c in enumerate(t["columns"]) if c not in skip]
            out[name] = sorted(repr([eval(r)[i] for i in keep]) for r in t["rows"])  # noqa: S307 - our own repr
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A function returning the URL of a fresh, empty database of the parametrised kind."""
    counter = iter(range(100))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/db{next(counter)}.sqlite"
        from datapipe.tests.services import create_database

        url: str = create_database(request.getfixturevalue("postgres_server_url"))
        return url.replace("postgresql+psycopg://", "postgresql://")

    return make


@pytest.fixture
def build_015(new_db: Any) -> Any:
    """``build_015(*args)``: a fresh database holding a 0.15 deployment of ``pipeline.py``."""
    python = _python_015()

    def build(*args: str) -> str:
        url: str = new_db()
        proc = _run(python, url, "build_015.py", str(RECORDS), *args)
        assert set(proc.stdout.split()) == {"gen_labels_970281e497", *BATCH_STEPS}
        return url

    return build


def test_adopt_then_first_run_processes_nothing(build_015: Any) -> None:
    url = build_015()
    before, before_update = timestamps(url), timestamps(url, process_ts=False)
    started = time.monotonic()
    out = cli(url, "db", "adopt").stdout
    seconds = time.monotonic() - started
    assert "adopted 5 table(s) and 3 step(s)" in out
    tables = dump(url)
    assert "ix_doubled_meta_version" in tables["doubled_meta"]["indexes"]
    assert "ix_count_tags_meta_failed" in tables["count_tags_meta"]["indexes"]
    assert len(tables["datapipe_watermarks"]["rows"]) == 4  # one per (batch step, input)
    assert timestamps(url) == before  # adopt touches neither update_ts nor process_ts
    assert run_counts(url) == NOTHING
    # the generator wrote identical labels again: confirmed (process_ts), not changed (update_ts)
    assert timestamps(url, process_ts=False) == before_update
    assert ours(url, "reingest", str(RECORDS)).strip() == "0"  # our hash of unchanged rows is the stored one
    assert run_counts(url) == NOTHING
    print(f"\nadopt of {RECORDS} items ({url.split(':')[0]}): {seconds:.2f}s (CLI process included), {_size(url)}")


def test_edit_after_adopt_reprocesses_exactly_its_dependents(build_015: Any) -> None:
    url = build_015()
    cli(url, "db", "adopt")
    ours(url, "edit", "5")
    assert run_counts(url) == EDITED
    assert run_counts(url) == NOTHING


def test_keys_pending_in_015_stay_pending(build_015: Any) -> None:
    url = build_015("pending")
    dry = cli(url, "db", "adopt", "--dry-run").stdout
    assert "double_e30557cf08_meta: add seen_below/seen_pending; 1 key(s) stay pending; no watermark" in dry
    assert "count_tags_meta: add seen_below/seen_pending; 0 key(s) stay pending; watermark set" in dry
    cli(url, "db", "adopt")
    assert run_counts(url) == EDITED
    assert run_counts(url) == NOTHING


def test_dry_run_changes_nothing(build_015: Any) -> None:
    url = build_015()
    before = dump(url)
    out = cli(url, "db", "adopt", "--dry-run").stdout
    assert "metadata written by datapipe 0.15" in out and "dry run: nothing was changed" in out
    assert f"recompute the hash of {RECORDS - 1} live row(s)" in out
    assert dump(url) == before


def test_adopt_twice_is_idempotent(build_015: Any) -> None:
    url = build_015()
    cli(url, "db", "adopt")
    once = dump(url)
    assert "already adopted, nothing changed" in cli(url, "db", "adopt").stdout
    assert dump(url) == once
    assert "already adopted" in cli(url, "db", "adopt", "--dry-run").stdout


def copy_db(url: str, tmp_path: Path) -> str:
    """A copy of the database at ``url`` (a file copy, or ``CREATE DATABASE ... TEMPLATE``)."""
    if url.startswith("sqlite"):
        target = tmp_path / "copy.sqlite"
        shutil.copy(url[len("sqlite:///") :], target)
        return f"sqlite:///{target}"
    server, _, name = url.rpartition("/")
    engine = create_engine(_sqlalchemy_url(f"{server}/postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(text(f'CREATE DATABASE "{name}_copy" TEMPLATE "{name}"'))
    engine.dispose()
    return f"{server}/{name}_copy"


def test_killed_adopt_then_rerun_equals_uninterrupted(build_015: Any, tmp_path: Path) -> None:
    killed = build_015()
    clean = copy_db(killed, tmp_path)
    cli(clean, "db", "adopt")
    proc = _run(sys.executable, killed, "ours.py", "adopt-killed", check=False)
    assert proc.returncode == -9, proc.stderr
    half = dump(killed)
    assert "datapipe_watermarks" not in half and "version" not in half["item_meta"]["columns"]
    cli(killed, "db", "adopt")
    assert dump(killed) == dump(clean)
    assert run_counts(killed) == NOTHING
    ours(killed, "edit", "5")
    assert run_counts(killed) == EDITED


def test_refuses_a_database_without_015_metadata(new_db: Any) -> None:
    url = new_db()
    engine = create_engine(_sqlalchemy_url(url))
    with engine.begin() as con:
        con.execute(text("CREATE TABLE unrelated (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    before = dump(url)
    proc = cli(url, "db", "adopt", check=False)
    assert proc.returncode == 1
    assert "adopt refused, nothing was changed" in proc.stderr and "none of the pipeline's metadata" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert dump(url) == before


def test_refuses_unrecognised_metadata_table(build_015: Any) -> None:
    url = build_015()
    engine = create_engine(_sqlalchemy_url(url))
    with engine.begin() as con:
        con.execute(text("ALTER TABLE doubled_meta ADD COLUMN surprise INTEGER"))
    engine.dispose()
    before = dump(url)
    proc = cli(url, "db", "adopt", check=False)
    assert proc.returncode == 1
    assert "'doubled_meta' is neither datapipe 0.15 metadata nor ours" in proc.stderr
    assert "['surprise']" in proc.stderr
    assert dump(url) == before


def _size(url: str) -> str:
    if url.startswith("sqlite"):
        return f"{os.path.getsize(url[len('sqlite:///'):]) / 1e6:.2f} MB file"
    engine = create_engine(_sqlalchemy_url(url))
    with engine.connect() as con:
        size = con.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    return f"{size / 1e6:.2f} MB database"


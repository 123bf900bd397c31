"""SQLite WAL checkpoints run in a background thread (``datapipe.sql.checkpoint``), not in the writer's commit.

SQLite only: PostgreSQL has no WAL file for the client to checkpoint.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import List

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, select

from datapipe.sql import checkpoint as checkpoint_module
from datapipe.sql.checkpoint import AUTOCHECKPOINT_PAGES, CHECKPOINTER, checkpoint
from datapipe.sql.connection import DBConn

PAGE = 4096


def _blobs(dbconn: DBConn) -> Table:
    table = Table("blobs", MetaData(), Column("id", Integer, primary_key=True), Column("b", LargeBinary))
    table.create(dbconn.con)
    return table


def test_committed_pages_reach_the_database_file_without_a_checkpoint_in_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    dbconn = DBConn(f"sqlite:///{path}")
    table = _blobs(dbconn)
    CHECKPOINTER.wait_idle()
    before = path.stat().st_size
    # about 500 pages: below SQLite's default automatic checkpoint (1 000) and ours (AUTOCHECKPOINT_PAGES)
    with dbconn.begin() as con:
        con.execute(table.insert(), [{"id": i, "b": os.urandom(PAGE)} for i in range(250)])
    CHECKPOINTER.wait_idle()
    assert path.stat().st_size >= before + 250 * PAGE
    with dbconn.begin() as con:
        assert con.execute(select(table.c.id)).scalars().all() == list(range(250))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # a new raw connection: SQLite's
    with dbconn.begin() as con:
        pages = con.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == AUTOCHECKPOINT_PAGES
    raw.close()


def test_only_transactions_that_wrote_nudge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'n.db'}")
    table = _blobs(dbconn)
    nudged: List[str] = []
    monkeypatch.setattr(CHECKPOINTER, "nudge", nudged.append)
    with dbconn.begin() as con:
        con.execute(select(table.c.id)).all()
    assert nudged == []
    with dbconn.begin() as con:
        con.execute(table.insert(), [{"id": 1, "b": b"x"}])
    assert nudged == [str(tmp_path / "n.db")]
    with pytest.raises(RuntimeError), dbconn.begin() as con:
        con.execute(table.insert(), [{"id": 2, "b": b"y"}])
        raise RuntimeError("rolled back")
    assert nudged == [str(tmp_path / "n.db")]


def test_a_database_in_memory_has_no_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    dbconn = DBConn("sqlite://")
    table = _blobs(dbconn)
    nudged: List[str] = []
    monkeypatch.setattr(CHECKPOINTER, "nudge", nudged.append)
    with dbconn.begin() as con:
        con.execute(table.insert(), [{"id": 1, "b": b"x"}])
    assert nudged == []


def test_checkpoint_never_creates_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "gone.db"
    with caplog.at_level("DEBUG", logger="datapipe.sql"):
        checkpoint(str(missing))
    assert not missing.exists()
    assert "no checkpoint of" in caplog.text


def test_the_thread_ends_when_idle_and_starts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "IDLE_SECONDS", 0.01)
    monkeypatch.setattr(checkpoint_module, "MIN_INTERVAL", 0.0)
    path = tmp_path / "t.db"
    dbconn = DBConn(f"sqlite:///{path}")
    table = _blobs(dbconn)
    for round_ in range(2):
        with dbconn.begin() as con:
            con.execute(table.insert(), [{"id": round_, "b": os.urandom(PAGE)}])
        CHECKPOINTER.wait_idle()
        thread = CHECKPOINTER._thread
        if thread is not None:
            thread.join()
        assert CHECKPOINTER._thread is None
    assert path.stat().st_size >= 3 * PAGE

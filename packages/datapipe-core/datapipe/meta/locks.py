"""Per-step run locks: at most one process runs a given step against one metadata database.

Two runners of the same pipeline (two cron jobs overlapping, a manual run during a scheduled
one) would otherwise process the same keys at once. Every step run takes the step's lock for
its whole duration:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock`` / ``pg_advisory_lock``)
  on a 64-bit key derived from the schema and step name, held on a dedicated autocommit
  connection. The server releases it when the session ends, so a killed runner never leaves
  a stale lock behind.
* SQLite (file databases): ``flock`` on ``<database file>.datapipe-locks/<step>.lock``; the
  kernel releases it when the process dies. In-memory databases are private to one process
  and need no lock.
* Other databases: no lock.

What the second runner does is chosen by ``DATAPIPE_STEP_LOCK`` (read at every step run):

``wait`` (default)
    log a warning naming the step and wait until the first runner finishes the step, then run
    it (usually finding nothing left to do). ``DATAPIPE_STEP_LOCK_TIMEOUT`` (seconds) bounds
    the wait; when it expires ``StepLockedError`` is raised.
``fail``
    raise ``StepLockedError`` at once.
``off``
    take no lock (only for setups that guarantee a single runner themselves).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from datapipe.errors import DatapipeError, StoreError, mask_url

if TYPE_CHECKING:
    from datapipe.sql.connection import DBConn

logger = logging.getLogger("datapipe.meta.locks")

MODES = ("wait", "fail", "off")
POLL_INTERVAL = 0.1  # seconds between attempts when a timeout is set


class StepLockedError(DatapipeError, RuntimeError):
    """Another process holds the run lock of the step."""


def lock_mode() -> str:
    mode = os.environ.get("DATAPIPE_STEP_LOCK", "wait").strip().lower() or "wait"
    if mode not in MODES:
        raise ValueError(f"DATAPIPE_STEP_LOCK must be one of {list(MODES)}, got {mode!r}")
    return mode


def lock_timeout() -> Optional[float]:
    value = os.environ.get("DATAPIPE_STEP_LOCK_TIMEOUT", "").strip()
    return float(value) if value else None


def advisory_key(dbconn: DBConn, step: str) -> int:
    """The signed 64-bit advisory-lock key of ``step`` in ``dbconn``'s schema."""
    digest = hashlib.sha1(f"datapipe-step:{dbconn.schema or ''}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _busy(step: str, dbconn: DBConn, why: str) -> StepLockedError:
    return StepLockedError(
        f"step {step!r} is already being run by another process (run lock in {mask_url(dbconn.connstr)}); {why}"
    )


class _Attempt:
    """One kind of lock: ``try_acquire()`` without blocking, ``acquire()`` blocking, ``release()``."""

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Give up without having acquired the lock."""
        raise NotImplementedError


class _PgLock(_Attempt):
    def __init__(self, dbconn: DBConn, step: str) -> None:
        self.key = advisory_key(dbconn, step)
        self.con = dbconn.con.connect().execution_options(isolation_level="AUTOCOMMIT")

    def try_acquire(self) -> bool:
        return bool(self.con.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())

    def acquire(self) -> None:
        self.con.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

    def release(self) -> None:
        try:
            self.con.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        except Exception:  # noqa: BLE001 - the session is gone, and the lock with it
            self.con.invalidate()
        finally:
            self.con.close()

    def close(self) -> None:
        self.con.close()


class _FileLock(_Attempt):
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def _flock(self, flags: int) -> None:
        import fcntl

        fcntl.flock(self.fd, flags)

    def try_acquire(self) -> bool:
        import fcntl

        try:
            self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self) -> None:
        import fcntl

        self._flock(fcntl.LOCK_EX)

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the flock

    def close(self) -> None:
        os.close(self.fd)


def _sqlite_lock_path(dbconn: DBConn, step: str) -> Optional[str]:
    database = make_url(dbconn.connstr).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", step)[:100]
    digest = hashlib.sha1(step.encode()).hexdigest()[:8]
    return f"{os.path.abspath(database)}.datapipe-locks/{safe}-{digest}.lock"


def _make_lock(dbconn: DBConn, step: str) -> Optional[_Attempt]:
    dialect = dbconn.con.dialect.name
    if dialect == "postgresql":
        try:
            return _PgLock(dbconn, step)
        except OperationalError as e:
            raise StoreError(f"database {mask_url(dbconn.connstr)} failed: {e.orig}") from e
    if dialect == "sqlite":
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover - not POSIX
            return None
        path = _sqlite_lock_path(dbconn, step)
        return _FileLock(path) if path else None
    return None


def _wait(lock: _Attempt, step: str, dbconn: DBConn, timeout: Optional[float]) -> None:
    logger.warning("step %s is being run by another process; waiting for its run lock", step)
    if timeout is None:
        lock.acquire()
        return
    deadline = time.monotonic() + timeout
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            raise _busy(step, dbconn, f"gave up after waiting {timeout:g}s (DATAPIPE_STEP_LOCK_TIMEOUT)")
        time.sleep(POLL_INTERVAL)


@contextmanager
def step_lock(dbconn: DBConn, step: str, mode: Optional[str] = None) -> Iterator[None]:
    """Hold the run lock of ``step`` for the block (see the module docstring for ``mode``).

    Raises ``StepLockedError`` when another process holds it and ``mode`` is ``fail`` (or the
    ``wait`` timeout expires).
    """
    mode = mode or lock_mode()
    lock = None if mode == "off" else _make_lock(dbconn, step)
    if lock is None:
        yield
        return
    try:
        if not lock.try_acquire():
            if mode == "fail":
                raise _busy(step, dbconn, "refused because DATAPIPE_STEP_LOCK=fail; retry when that run has finished")
            _wait(lock, step, dbconn, lock_timeout())
    except BaseException:
        lock.close()
        raise
    try:
        yield
    finally:
        lock.release()

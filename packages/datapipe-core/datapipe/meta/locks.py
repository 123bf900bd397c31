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

``step_is_running`` tells whether some process holds a step's lock (the web view shows it as
"running") without taking the lock, so looking never delays or fails a runner.
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


def _flock_held(path: str) -> bool:
    """Whether any process holds a ``flock`` on ``path``, read from ``/proc/locks`` (Linux).

    Elsewhere, fall back to a non-blocking shared-lock probe released at once.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return _probe_flock(path)
    inode = f":{st.st_ino}"
    for line in lines:
        parts = line.split()
        if "FLOCK" in parts and "->" not in parts and any(p.endswith(inode) for p in parts):
            device = next(p for p in parts if p.endswith(inode))
            major, minor, _ = device.split(":")
            if (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                return True
    return False


def _probe_flock(path: str) -> bool:  # pragma: no cover - not Linux
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def step_is_running(dbconn: DBConn, step: str) -> bool:
    """Whether some process (this one included) holds the run lock of ``step`` right now.

    PostgreSQL: looks the advisory lock up in ``pg_locks``; SQLite: looks for a ``flock`` on the
    step's lock file. Never takes the lock. Always False where runs take no lock (in-memory
    SQLite, other databases).
    """
    dialect = dbconn.con.dialect.name
    if dialect == "postgresql":
        key = advisory_key(dbconn, step) & 0xFFFFFFFFFFFFFFFF
        sql = text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :hi AND objid = :lo AND objsubid = 1 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        with dbconn.read() as con:
            return con.execute(sql, {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).first() is not None
    if dialect == "sqlite":
        path = _sqlite_lock_path(dbconn, step)
        return path is not None and _flock_held(path)
    return False

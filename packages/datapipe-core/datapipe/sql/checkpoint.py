"""SQLite WAL checkpoints in a background thread, off the writer's path.

In WAL mode a commit appends the pages it changed to the ``-wal`` file; a *checkpoint* copies them
back into the database file and syncs it. By default SQLite runs one inside the commit that takes
the WAL past 1 000 pages, so every few batches one commit of a run also pays for the earlier ones'
pages and two syncs (measured: 15 ms against 1.3 ms for a 1 000-row batch of a cross join; a
third of the SQLite time of a 10-batch rerun). SQLite's documentation suggests running checkpoints
in another thread instead; this module does.

- After a transaction that wrote commits, ``DBConn`` calls ``nudge(path)``. Nudges are coalesced:
  one thread per process wakes, runs ``PRAGMA wal_checkpoint(PASSIVE)`` for every database nudged
  since it last looked, each on a short-lived connection of its own, and waits ``MIN_INTERVAL``
  before it looks again (a checkpoint after every small commit cost a first run 10 % more than
  SQLite's own: two syncs each). The sqlite3 module releases the GIL while SQLite works, so the
  checkpoint overlaps the writer's next batch.
- ``PASSIVE`` never waits for and never blocks a reader or writer: it copies what it can and
  returns. A checkpoint left incomplete (a reader still on old pages) is finished by a later one.
- The writer's own automatic checkpoint stays on, at ``AUTOCHECKPOINT_PAGES`` instead of 1 000
  (set on each connection by ``DBConn``): should this thread fall behind or be gone (after
  ``fork``, until the next nudge starts a new one), the WAL stays bounded all the same.
- A checkpoint changes only where committed pages live, never what a reader sees, so durability is
  as before: a process killed mid-checkpoint leaves the WAL to recover from, as SQLite does in any
  crash. Failures (the file was removed, say) are logged at debug level and otherwise ignored.
- The thread ends after ``IDLE_SECONDS`` without a nudge and holds no connection while it sleeps.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Optional, Set
from urllib.parse import quote

logger = logging.getLogger("datapipe.sql")

AUTOCHECKPOINT_PAGES = 4000  # the writer's own checkpoint, should the thread fall behind (SQLite's default: 1000)
IDLE_SECONDS = 5.0
MIN_INTERVAL = 0.05  # seconds between two rounds: many small checkpoints cost more syncs than they save


class Checkpointer:
    """The process's checkpoint thread and the databases waiting for it (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._waiting: Set[str] = set()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0
        self._busy = False

    def nudge(self, path: str) -> None:
        """Checkpoint the SQLite database file ``path`` soon, in the background."""
        with self._lock:
            self._waiting.add(path)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="datapipe-sqlite-checkpoint", daemon=True)
                self._thread.start()
            self._lock.notify()

    def wait_idle(self) -> None:
        """Block until every nudged database has been checkpointed (for tests)."""
        with self._lock:
            while (self._waiting or self._busy) and self._thread is not None and self._pid == os.getpid():
                self._lock.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                if not self._waiting and not self._lock.wait_for(lambda: bool(self._waiting), IDLE_SECONDS):
                    self._thread = None
                    return
                paths, self._waiting = self._waiting, set()
                self._busy = True
            for path in paths:
                checkpoint(path)
            time.sleep(MIN_INTERVAL)


def checkpoint(path: str) -> None:
    """One ``PASSIVE`` checkpoint of ``path`` on a connection of its own; never creates the file."""
    try:
        con = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=0, check_same_thread=False)
    except sqlite3.Error as e:
        logger.debug("no checkpoint of %s: %s", path, e)
        return
    try:
        con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as e:
        logger.debug("checkpoint of %s failed: %s", path, e)
    finally:
        con.close()


CHECKPOINTER = Checkpointer()

"""Qdrant client creation: server URLs and qdrant-client's embedded modes.

``url`` is one of:

* ``http://host:6333`` / ``https://...`` — a Qdrant server (a client per store object);
* ``":memory:"`` — embedded, in-memory; one instance per process, shared by every store;
* anything else — a local directory for embedded, persistent Qdrant. qdrant-client locks the
  directory, so it can be opened only once per process: stores on the same path share one client
  (cached here, keyed by process id and absolute path). Another *process* cannot open it at the
  same time; use a server for multi-process executors such as Ray.

Embedded clients are not thread-safe, so calls through them are serialised with a lock.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

from qdrant_client import QdrantClient

from datapipe.errors import mask_url

MEMORY = ":memory:"

_cache_lock = threading.Lock()
_embedded: Dict[Tuple[int, str], Tuple[QdrantClient, threading.RLock]] = {}


def is_server_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def embedded_location(url: str) -> str:
    """``":memory:"`` or the absolute path of an embedded store."""
    if url == MEMORY:
        return MEMORY
    path = url[len("file://") :] if url.startswith("file://") else url
    return os.path.abspath(os.path.expanduser(path))


def describe_address(url: str) -> str:
    """The address for messages, with any password in the URL masked (the api_key is never shown)."""
    if is_server_url(url):
        return mask_url(url)
    location = embedded_location(url)
    return "embedded in-memory Qdrant" if location == MEMORY else f"embedded Qdrant at {location}"


def embedded_client(url: str) -> Tuple[QdrantClient, threading.RLock]:
    """The process-wide client (and its lock) for an embedded location, opened on first use."""
    location = embedded_location(url)
    key = (os.getpid(), location)
    with _cache_lock:
        if key not in _embedded:
            if location == MEMORY:
                client = QdrantClient(location=MEMORY)
            else:
                os.makedirs(location, exist_ok=True)
                client = QdrantClient(path=location, force_disable_check_same_thread=True)
            _embedded[key] = (client, threading.RLock())
        return _embedded[key]


def close_embedded_clients() -> None:
    """Close every embedded client this process opened (releases the directory locks)."""
    with _cache_lock:
        for (pid, _), (client, _lock) in list(_embedded.items()):
            if pid == os.getpid():
                with contextlib.suppress(Exception):
                    client.close()
        _embedded.clear()


atexit.register(close_embedded_clients)  # close before interpreter teardown (avoids noisy __del__)


def server_client(url: str, api_key: Optional[str], client_kwargs: Dict[str, Any]) -> QdrantClient:
    with warnings.catch_warnings():
        # qdrant-client warns about api keys over plain http; the user chose the URL.
        warnings.simplefilter("ignore")
        kwargs = dict(client_kwargs)
        kwargs.setdefault("check_compatibility", False)  # saves a round trip per client
        return QdrantClient(url=url, api_key=api_key, **kwargs)


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    yield

"""``MilvusClient`` creation for servers and embedded Milvus Lite.

``uri`` is either a server address (``http://host:19530``, ``https://...``, ``tcp://...``) or a local
file path ending in ``.db``, which runs embedded Milvus Lite (pymilvus starts a local Milvus Lite
server for the file). Clients are cached per process, URI, token and database, so every store on
the same Milvus shares one connection, and pickled stores reconnect lazily.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, Optional, Tuple

from pymilvus import MilvusClient

from datapipe.errors import mask_url

_lock = threading.Lock()
_clients: Dict[Tuple[Any, ...], MilvusClient] = {}

SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")


def is_lite(uri: str) -> bool:
    return not uri.startswith(SERVER_SCHEMES)


def normalise_uri(uri: str) -> str:
    """Server URIs unchanged; Milvus Lite files as absolute paths (``.db`` suffix required by pymilvus)."""
    if not is_lite(uri):
        return uri
    path = os.path.abspath(os.path.expanduser(uri[len("file://") :] if uri.startswith("file://") else uri))
    if not path.endswith(".db"):
        raise ValueError(f"a Milvus Lite URI must be a file path ending in '.db', got {uri!r}")
    return path


def describe_address(uri: str) -> str:
    """The address for messages, with any password masked (the token is never shown)."""
    if is_lite(uri):
        return f"Milvus Lite at {uri}"
    return mask_url(uri)


class _LiteIteratorNoise(logging.Filter):
    """Milvus Lite has no MVCC timestamps; pymilvus warns about it on every query iterator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


def quiet_lite_iterator_warning() -> None:
    logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _LiteIteratorNoise) for f in logger.filters):
        logger.addFilter(_LiteIteratorNoise())


def get_client(uri: str, token: Optional[str], db_name: str, client_kwargs: Dict[str, Any]) -> MilvusClient:
    """The process-wide ``MilvusClient`` for this address, connected on first use."""
    key = (os.getpid(), uri, token or "", db_name, tuple(sorted(client_kwargs.items())))
    with _lock:
        if key not in _clients:
            if is_lite(uri):
                os.makedirs(os.path.dirname(uri), exist_ok=True)
                quiet_lite_iterator_warning()
            _clients[key] = MilvusClient(uri=uri, token=token or "", db_name=db_name, **client_kwargs)
        return _clients[key]


def close_clients() -> None:
    """Close every client this process opened (Milvus Lite servers stop with their last client)."""
    with _lock:
        for key, client in list(_clients.items()):
            if key[0] == os.getpid():
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    logging.getLogger("datapipe_milvus").debug("closing %s failed", key[1], exc_info=True)
        _clients.clear()

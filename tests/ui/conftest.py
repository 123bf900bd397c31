"""Fixtures for the web-view tests: pipelines in a temp dir, a real uvicorn server in a thread, httpx clients.

``serve(app, token=None, read_only=False)`` starts ``datapipe.ui.server.create_app`` on a socket bound
to a free loopback port and returns its base URL; the server stops at the end of the test.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
from ui_support import HERE, REPO, import_path

from datapipe.compute import DatapipeApp, run_steps


class Served:
    def __init__(self, url: str, web: Any, server: Any, thread: threading.Thread) -> None:
        self.url = url
        self.web = web
        self.server = server
        self.thread = thread

    @property
    def runs(self) -> Any:
        return self.web.state.runs


def _start(app: DatapipeApp, token: Optional[str], read_only: bool) -> Served:
    import uvicorn

    from datapipe.ui.server import create_app

    web = create_app(app, token=token, read_only=read_only)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(web, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # waiting for a condition, with a deadline
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return Served(f"http://127.0.0.1:{port}", web, server, thread)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: List[Served] = []

    def start(app: DatapipeApp, token: Optional[str] = None, read_only: bool = False) -> Served:
        served = _start(app, token, read_only)
        started.append(served)
        return served

    yield start
    for s in started:
        s.runs.wait(60)
        s.server.should_exit = True
        s.thread.join(20)


@pytest.fixture
def failing_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The module ``ui_pipeline.py`` with ``.app`` built on SQLite in ``tmp_path`` and run once:
    ``check`` has failed keys."""
    monkeypatch.setenv("DATAPIPE_UI_DB", f"sqlite:///{tmp_path}/ui.sqlite")
    monkeypatch.setenv("DATAPIPE_UI_FILES", str(tmp_path / "images"))
    module = import_path(HERE / "ui_pipeline.py", f"ui_pipeline_{tmp_path.name}")
    module.app = module.build()
    run_steps(module.app.ds, module.app.steps)
    yield module
    if module.GATE is not None:
        module.GATE.set()


@pytest.fixture
def failing_app(failing_pipeline: Any) -> DatapipeApp:
    return failing_pipeline.app  # type: ignore[no-any-return]


@pytest.fixture
def quickstart_app(tmp_path: Path) -> DatapipeApp:
    """The repository's quickstart, copied to ``tmp_path`` (its database is created there), not run yet."""
    target = tmp_path / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart", target, ignore=shutil.ignore_patterns("*.db", "out"))
    return import_path(target / "app.py", f"quickstart_{tmp_path.name}").app


@pytest.fixture
def client() -> Iterator[Callable[..., Any]]:
    import httpx

    clients: List[Any] = []

    def make(base_url: str, **kwargs: Any) -> Any:
        c = httpx.Client(base_url=base_url, timeout=30, **kwargs)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()

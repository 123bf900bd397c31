"""The HTTP side of the web view: a Starlette app serving the page, the JSON API and ``/metrics``.

``create_app(app, token=None, read_only=False)`` returns the ASGI application. Routes::

    GET  /                          the single-page app (static files under /static/)
    GET  /api/pipeline              graph (nodes, edges), read_only flag, active run
    GET  /api/steps                 status of every step (state, processed, pending, failed, running)
    GET  /api/steps/{name}          status, last errors (by error: keys, traceback), last run here;
                                    ?errors=N failed keys at most (default 50)
    POST /api/steps/{name}/run      run the step                     -> 202 {run}
    POST /api/steps/{name}/run-failed  run only its failed keys      -> 202 {run}
    POST /api/steps/{name}/reset    forget what it processed; body {"confirm": "<step name>"}
    GET  /api/tables                every table: store, live rows
    GET  /api/tables/{name}         columns, filterable columns, producers, consumers, rows
    GET  /api/tables/{name}/rows    ?page=&page_size=&filter=col=value (repeatable)&sort=key|update_ts
                                    &order=asc|desc&deleted=true
    POST /api/runs                  body {"steps": [names]} (all steps when absent) -> 202 {run}
    GET  /api/runs                  recent runs of this server, and the active one
    GET  /api/runs/{id}             one run with its events so far
    GET  /api/runs/{id}/events      server-sent events of the run until it ends
    GET  /metrics                   Prometheus text

Errors are JSON ``{"error": message}`` with a 4xx status for bad input (unknown step, table or
run: 404; malformed parameters: 400; a run already going: 409; an action on a read-only server:
403; a missing or wrong token: 401). Handlers that query databases are plain functions, which
Starlette runs in its thread pool, so a slow query never blocks the event stream.

Safety: with a token every request must carry it (``Authorization: Bearer``, or the cookie set
by opening ``/?token=...`` once). Without one, only loopback ``Host`` names are served (a page
on another site cannot reach the server by DNS rebinding). POST requests must be JSON and, when
the browser sends an ``Origin``, come from the page's own origin.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from datapipe.compute import DatapipeApp
from datapipe.errors import mask_url
from datapipe.executor import Executor
from datapipe.run_callback import RunCallback

from . import metrics, views
from .runs import RunManager
from .views import UiError

logger = logging.getLogger("datapipe.ui")

STATIC = Path(__file__).parent / "static"
COOKIE = "datapipe_ui_token"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
HEARTBEAT_SECONDS = 15.0


def create_app(
    app: DatapipeApp,
    token: Optional[str] = None,
    read_only: bool = False,
    executor: Optional[Executor] = None,
    callbacks: Sequence[RunCallback] = (),
) -> Starlette:
    """The ASGI application serving ``app``; see the module docstring. Runs started from the page use
    ``executor`` (single thread when None) and also report to ``callbacks``."""
    app.catalog.init_all_tables(app.ds)  # now, not concurrently from the request threads
    runs = RunManager(app, callbacks, executor)
    api = _Api(app, runs, read_only)
    routes = [
        Route("/", api.index),
        Route("/api/pipeline", api.pipeline),
        Route("/api/steps", api.steps),
        Route("/api/steps/{name}", api.step),
        Route("/api/steps/{name}/run", api.run_step, methods=["POST"]),
        Route("/api/steps/{name}/run-failed", api.run_failed, methods=["POST"]),
        Route("/api/steps/{name}/reset", api.reset_step, methods=["POST"]),
        Route("/api/tables", api.tables),
        Route("/api/tables/{name}", api.table),
        Route("/api/tables/{name}/rows", api.table_rows),
        Route("/api/runs", api.list_runs),
        Route("/api/runs", api.start_run, methods=["POST"]),
        Route("/api/runs/{run_id}", api.run),
        Route("/api/runs/{run_id}/events", api.run_events),
        Route("/metrics", api.metrics),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {UiError: _ui_error, HTTPException: _http_error, Exception: _server_error}
    web = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    web.state.runs = runs
    return Guard(web, token)  # type: ignore[return-value]


# ---------------------------------------------------------------- errors


def _json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": mask_url(message)}, status_code=status)


async def _ui_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UiError)
    return _json_error(str(exc), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = "no such page" if exc.status_code == 404 else str(exc.detail)
    return _json_error(f"{request.method} {request.url.path}: {what}", exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("request %s %s failed", request.method, request.url.path)
    lines = str(exc).strip().splitlines()
    return _json_error(f"{type(exc).__name__}: {lines[0] if lines else ''}", 500)


# ---------------------------------------------------------------- access control


class Guard:
    """ASGI middleware: token check, loopback ``Host`` check without a token, JSON-only same-origin POSTs."""

    def __init__(self, app: Starlette, token: Optional[str]) -> None:
        self.app = app
        self.token = token
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refuse(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if self.token and request.url.path == "/" and request.query_params.get("token") == self.token:
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refuse(self, request: Request) -> Optional[Response]:
        if self.token:
            if not self._has_token(request):
                return _json_error("a valid token is required: Authorization: Bearer <token>, or open /?token=...", 401)
        elif not _loopback_name(_host_name(request.headers.get("host", ""))):
            return _json_error("this server answers only to localhost (start it with --token to serve others)", 403)
        if request.method == "POST":
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _json_error("POST requests must send Content-Type: application/json", 415)
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return _json_error(f"cross-origin request from {origin} refused", 403)
        return None

    def _has_token(self, request: Request) -> bool:
        assert self.token is not None
        auth = request.headers.get("authorization", "")
        candidates = [request.cookies.get(COOKIE, "")]
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        if request.url.path == "/":
            candidates.append(request.query_params.get("token", ""))
        return any(c and hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates)


def _loopback_name(name: str) -> bool:
    if name in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# ---------------------------------------------------------------- handlers


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UiError(f"{name} must be an integer, got {raw!r}") from None


def _bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise UiError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1")


async def _body(request: Request) -> Dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UiError(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise UiError("the request body must be a JSON object")
    return body


class _Api:
    def __init__(self, app: DatapipeApp, runs: RunManager, read_only: bool) -> None:
        self.app = app
        self.runs = runs
        self.read_only = read_only

    def _writable(self) -> None:
        if self.read_only:
            raise UiError("this server is read-only (started with --read-only): actions are disabled", 403)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def pipeline(self, request: Request) -> Response:
        active = self.runs.active
        return JSONResponse(
            {
                "graph": views.graph(self.app),
                "read_only": self.read_only,
                "active_run": active.describe() if active else None,
            }
        )

    def _status(self, step: Any) -> Dict[str, Any]:
        status = views.step_status(self.app, step, step.name in self.runs.running_steps())
        status["last_run"] = self.runs.last_step_runs.get(step.name)
        return status

    def steps(self, request: Request) -> Response:
        active = self.runs.active
        return JSONResponse(
            {"steps": [self._status(s) for s in self.app.steps], "active_run": active.describe() if active else None}
        )

    def step(self, request: Request) -> Response:
        step = views.find_step(self.app, request.path_params["name"])
        limit = _int(request, "errors", 50)
        if not 0 <= limit <= 1000:
            raise UiError(f"errors must be between 0 and 1000, got {limit}")
        return JSONResponse({**self._status(step), "errors": views.step_errors(step, limit)})

    async def run_step(self, request: Request) -> Response:
        self._writable()
        await _body(request)
        step = views.find_step(self.app, request.path_params["name"])
        return JSONResponse({"run": self.runs.start([step]).describe()}, status_code=202)

    async def run_failed(self, request: Request) -> Response:
        self._writable()
        await _body(request)
        step = views.find_step(self.app, request.path_params["name"])
        if not views.has_key_state(step):
            raise UiError(f"step {step.name!r} ({views.step_kind(step)}) keeps no per-key state: no failed keys to run")
        return JSONResponse({"run": self.runs.start([step], kind="failed").describe()}, status_code=202)

    async def reset_step(self, request: Request) -> Response:
        self._writable()
        body = await _body(request)
        step = views.find_step(self.app, request.path_params["name"])
        if not views.has_key_state(step):
            raise UiError(f"step {step.name!r} ({views.step_kind(step)}) keeps no per-key state: nothing to reset")
        if body.get("confirm") != step.name:
            raise UiError(f"resetting step {step.name!r} needs the body {{\"confirm\": {json.dumps(step.name)}}}")
        await asyncio.to_thread(self._reset, step)
        return JSONResponse({"reset": step.name})

    def _reset(self, step: Any) -> None:
        from datapipe.meta.locks import StepLockedError, step_lock

        if step.name in self.runs.running_steps():
            raise UiError(f"step {step.name!r} is running; reset it when the run has finished", 409)
        try:
            with step_lock(self.app.ds.meta_dbconn, step.name, mode="fail"):
                step.reset_metadata(self.app.ds)
        except StepLockedError as e:
            raise UiError(str(e).split("; refused")[0] + "; reset it when that run has finished", 409) from e

    def tables(self, request: Request) -> Response:
        return JSONResponse({"tables": views.tables_overview(self.app)})

    def table(self, request: Request) -> Response:
        return JSONResponse(views.table_summary(self.app, request.path_params["name"]))

    def table_rows(self, request: Request) -> Response:
        unknown = set(request.query_params) - {"page", "page_size", "filter", "sort", "order", "deleted"}
        if unknown:
            known = "page, page_size, filter, sort, order, deleted"
            raise UiError(f"unknown parameter(s) {sorted(unknown)}; known: {known}")
        page = views.table_page(
            self.app,
            request.path_params["name"],
            page=_int(request, "page", 1),
            page_size=_int(request, "page_size", 50),
            filters=request.query_params.getlist("filter"),
            sort=request.query_params.get("sort", "key"),
            order=request.query_params.get("order", "asc"),
            deleted=_bool(request, "deleted"),
        )
        return JSONResponse(page)

    def list_runs(self, request: Request) -> Response:
        active = self.runs.active
        runs = [r.describe() for r in sorted(self.runs.runs.values(), key=lambda r: -r.id)]
        return JSONResponse({"runs": runs, "active_run": active.describe() if active else None})

    async def start_run(self, request: Request) -> Response:
        self._writable()
        body = await _body(request)
        names = body.get("steps")
        if names is None:
            steps = list(self.app.steps)
        elif isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            wanted = [views.find_step(self.app, n).name for n in names]
            steps = [s for s in self.app.steps if s.name in wanted]  # pipeline order
        else:
            raise UiError('"steps" must be a non-empty list of step names')
        run = await asyncio.to_thread(self.runs.start, steps)
        return JSONResponse({"run": run.describe()}, status_code=202)

    def _run_id(self, request: Request) -> int:
        raw = request.path_params["run_id"]
        try:
            return int(raw)
        except ValueError:
            raise UiError(f"run id must be an integer, got {raw!r}") from None

    def run(self, request: Request) -> Response:
        return JSONResponse(self.runs.get(self._run_id(request)).describe(with_events=True))

    async def run_events(self, request: Request) -> Response:
        run_id = self._run_id(request)
        past, queue = self.runs.subscribe(run_id)
        return StreamingResponse(
            self._stream(run_id, past, queue, request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, run_id: int, past: List[Dict[str, Any]], queue: asyncio.Queue, disconnected: Callable[[], Awaitable[bool]]
    ) -> Any:
        try:
            for event in past:
                yield _sse(event)
                if event["type"] == "run_end":
                    return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except asyncio.TimeoutError:
                    if await disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield _sse(event)
                if event["type"] == "run_end":
                    return
        finally:
            self.runs.unsubscribe(run_id, queue)

    def metrics(self, request: Request) -> Response:
        text = metrics.render(self.app, self.runs.running_steps(), self.runs.last_step_runs)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _sse(event: Dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

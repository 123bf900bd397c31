"""The ``datapipe`` command line.

    datapipe [--pipeline module.path:app] [--executor NAME] [--debug] [--no-callbacks] COMMAND

``--pipeline`` names a ``DatapipeApp`` (or a function returning one) as ``module:attribute``;
the module is imported with the working directory on ``sys.path`` (default ``app:app``).

Commands: ``run`` (``--loop``), ``step list|run|reset-metadata|run-idx`` (``--name``, ``--labels``),
``table list``, ``db create-all``, ``db upgrade``,
``db adopt``, ``plugins list``, ``graph`` (Mermaid, ``--format dot``).
Plugins add commands through the ``datapipe_cli`` hook.

Exit codes: 0 success; 1 a run or command failed (a step with failed batches, an unreachable
database, an error in the pipeline); 2 bad usage (bad ``--pipeline``, unknown executor, no step
matching the filters, malformed ``--idx``). Errors are one line on stderr; ``--debug`` shows the
traceback and debug logging. Database URLs are always printed with the password masked.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
import pandas as pd

from datapipe.compute import ComputeStep, DatapipeApp, run_steps
from datapipe.errors import mask_url
from datapipe.executor import Executor
from datapipe.run_callback import CompositeRunCallback, RunCallback
from datapipe.run_config import RunConfig
from datapipe.sql.schema import python_type

logger = logging.getLogger("datapipe.cli")

EXIT_FAILED = 1
EXIT_USAGE = 2

class CliError(click.ClickException):
    """A failure reported as one line (passwords masked) with exit code 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(mask_url(message))


class CliUsageError(CliError):
    """Bad usage reported as one line with exit code 2."""

    exit_code = EXIT_USAGE


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    name = type(error).__name__
    return mask_url(f"{name}: {first}" if first else name)


# ---------------------------------------------------------------- context


@dataclass
class CliContext:
    pipeline: str
    executor_name: Optional[str]
    debug: bool
    no_callbacks: bool
    _app: Optional[DatapipeApp] = None

    @property
    def app(self) -> DatapipeApp:
        if self._app is None:
            self._app = load_app(self.pipeline, debug=self.debug)
        return self._app

    def executor(self) -> Optional[Executor]:
        if self.executor_name is None:
            return None
        from datapipe.plugins import PluginError, get_executor

        try:
            return get_executor(self.executor_name)  # type: ignore[no-any-return]
        except PluginError as e:
            raise CliUsageError(str(e)) from e

    def callbacks(self, progress: RunCallback) -> RunCallback:
        from datapipe.tracing import OtelRunCallback, otel_available

        callbacks = [progress]
        if otel_available():
            callbacks.append(OtelRunCallback())
        if not self.no_callbacks:
            from datapipe.plugins import get_run_callbacks

            callbacks.extend(get_run_callbacks())
        return CompositeRunCallback(callbacks)


def load_app(spec: str, debug: bool = False) -> DatapipeApp:
    """Import ``module.path:attribute`` (cwd on ``sys.path``) and return the ``DatapipeApp``.

    Errors become one-line ``CliError``/``CliUsageError``; with ``debug`` the original exception propagates.
    """
    module_name, attr = split_pipeline_spec(spec)
    attr = attr or "app"
    if not module_name:
        raise CliUsageError(f"--pipeline {spec!r}: expected module.path:attribute, e.g. app:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = _import_file(spec, module_name) if _is_path(module_name) else importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if debug:
            raise
        if e.name is not None and module_name.startswith(e.name):
            raise CliUsageError(
                f"--pipeline {spec!r}: cannot import module {module_name!r} from {os.getcwd()} ({e})"
            ) from e
        raise CliError(f"--pipeline {spec!r}: importing {module_name!r} failed: {_one_line(e)}") from e
    except click.ClickException:
        raise
    except Exception as e:
        if debug:
            raise
        raise CliError(f"--pipeline {spec!r}: importing {module_name!r} failed: {_one_line(e)}") from e
    if not hasattr(module, attr):
        raise CliUsageError(f"--pipeline {spec!r}: module {module_name!r} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, DatapipeApp) and callable(app):
        app = app()
    if not isinstance(app, DatapipeApp):
        raise CliUsageError(f"--pipeline {spec!r}: {attr!r} is a {type(app).__name__}, not a DatapipeApp")
    return app


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def split_pipeline_spec(spec: str) -> Tuple[str, str]:
    """Target and attribute of ``--pipeline``: a module (``pkg.mod:app``) or a file (``dir/app.py[:app]``)."""
    if spec.endswith(".py"):
        return spec, ""
    if _is_path(spec):
        target, _, attr = spec.rpartition(":")
        return (target, attr) if target else (spec, "")
    target, _, attr = spec.partition(":")
    return target, attr


def _import_file(spec: str, path: str) -> Any:
    """Import the Python file ``path`` as a module named after it, its folder first on ``sys.path``."""
    import importlib.util

    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise CliUsageError(f"--pipeline {spec!r}: no such file {full}")
    folder = os.path.dirname(full)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(full))[0]
    loader_spec = importlib.util.spec_from_file_location(name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise CliUsageError(f"--pipeline {spec!r}: cannot import {full}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    loader_spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- step selection


def parse_labels(values: Sequence[str]) -> List[Tuple[str, str]]:
    """``("a=1,b=2", "c=3")`` -> ``[("a", "1"), ("b", "2"), ("c", "3")]``."""
    labels = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise CliUsageError(f"--labels {item!r}: expected key=value")
            labels.append((key, val))
    return labels


def select_steps(steps: Sequence[ComputeStep], names: Optional[str], labels: Sequence[str]) -> List[ComputeStep]:
    """Steps whose name equals or starts with one of the comma-separated ``names`` and that have all ``labels``."""
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    required = parse_labels(labels)
    selected = [
        s
        for s in steps
        if (not wanted or any(s.name == n or s.name.startswith(n) for n in wanted))
        and all(label in [tuple(x) for x in s.labels] for label in required)
    ]
    if not selected:
        what = []
        if wanted:
            what.append(f"--name {names}")
        if required:
            what.append("--labels " + ",".join(f"{k}={v}" for k, v in required))
        known = ", ".join(s.name for s in steps) or "none"
        raise CliUsageError(f"no step matches {' '.join(what) or 'the pipeline'}; steps: {known}")
    return selected


def step_filters(f: Any) -> Any:
    f = click.option("--labels", "labels", multiple=True, help="Only steps with these labels: key=value[,key=value].")(
        f
    )
    return click.option("--name", "names", default=None, help="Step name, name prefix, or a comma-separated list.")(f)


# ---------------------------------------------------------------- plain text tables


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Aligned plain-text columns (stable output for scripts and tests)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------- the group


class DatapipeGroup(click.Group):
    """Turns exceptions into one clear line and an exit code (traceback with ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as e:
            obj = ctx.find_object(CliContext)
            if obj is not None and obj.debug:
                raise
            raise CliError(_one_line(e)) from e


class _OneLineFormatter(logging.Formatter):
    """Log records as one line, passwords masked; tracebacks only with ``--debug``."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        if self.debug:
            return mask_url(super().format(record))
        return mask_url(self.formatMessage(_with_message(record)).splitlines()[0])


def _with_message(record: logging.LogRecord) -> logging.LogRecord:
    record.message = record.getMessage()
    return record


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter(debug))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, _OneLineFormatter)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


ENVIRONMENT_HELP = """\b
Environment variables:
  DATAPIPE_PIPELINE           default of --pipeline
  DATAPIPE_FAIL_FAST=1        default of --fail-fast: stop at the first error of a step function
  DATAPIPE_STEP_LOCK          wait (default) | fail | off: when another process runs the same step
  DATAPIPE_STEP_LOCK_TIMEOUT  seconds to wait for a step's lock
  RAY_ADDRESS                 the Ray cluster of --executor ray
"""


@click.group(cls=DatapipeGroup, epilog=ENVIRONMENT_HELP)
@click.option(
    "--pipeline",
    default="app:app",
    show_default=True,
    envvar="DATAPIPE_PIPELINE",
    help="The DatapipeApp to load: module.path:attribute (imported from the working directory) or "
    "path/to/file.py[:attribute]. Env: DATAPIPE_PIPELINE.",
)
@click.option("--executor", "executor_name", default=None, help="Executor name, e.g. single_thread or ray.")
@click.option("--debug", is_flag=True, help="Debug logging and full tracebacks.")
@click.option("--no-callbacks", is_flag=True, help="Do not attach run callbacks contributed by plugins.")
@click.version_option(package_name="datapipe-core", prog_name="datapipe")
@click.pass_context
def cli(ctx: click.Context, pipeline: str, executor_name: Optional[str], debug: bool, no_callbacks: bool) -> None:
    """Datapipe: durable, incremental batch processing."""
    _configure_logging(debug)
    ctx.obj = CliContext(pipeline, executor_name, debug, no_callbacks)


# ---------------------------------------------------------------- run


def _run_once(
    obj: CliContext, steps: Sequence[ComputeStep], executor: Optional[Executor], fail_fast: Optional[bool]
) -> int:
    from datapipe.progress import RichProgress
    from datapipe.run_result import format_failures

    progress = RichProgress()
    run_config = RunConfig(callback=obj.callbacks(progress))
    result = run_steps(obj.app.ds, steps, run_config=run_config, executor=executor, fail_fast=fail_fast)
    if not result.ok:
        click.echo(mask_url(f"Error: {format_failures(result, debug=obj.debug)}"), err=True)
        hint = "" if obj.debug else "; --debug shows full tracebacks"
        click.echo(f"  (failed keys are retried on the next run; see: datapipe step list --status{hint})", err=True)
        return EXIT_FAILED
    return 0


def _run(
    obj: CliContext,
    steps: Sequence[ComputeStep],
    loop: bool,
    loop_delay: float,
    max_loops: int,
    fail_fast: Optional[bool] = None,
) -> None:
    executor = obj.executor()
    steps = list(steps)
    code = 0
    iteration = 0
    while True:
        iteration += 1
        code = _run_once(obj, steps, executor, fail_fast)
        if not loop or (max_loops and iteration >= max_loops):
            break
        time.sleep(loop_delay)
    if code:
        raise click.exceptions.Exit(code)


def _loop_options(f: Any) -> Any:
    f = click.option(
        "--fail-fast/--no-fail-fast",
        default=None,
        help="Stop at the first exception of a step function (default: env DATAPIPE_FAIL_FAST, else off: "
        "failed batches are recorded and retried on the next run).",
    )(f)
    f = click.option("--max-loops", default=0, help="With --loop: stop after this many runs (0 = forever).")(f)
    f = click.option("--loop-delay", default=30.0, show_default=True, help="Seconds to wait between runs with --loop.")(
        f
    )
    return click.option("--loop", is_flag=True, help="Run again and again (until Ctrl-C).")(f)


@cli.command()
@_loop_options
@click.pass_obj
def run(obj: CliContext, loop: bool, loop_delay: float, max_loops: int, fail_fast: Optional[bool]) -> None:
    """Run every step, each processing only what changed.

    A step function that raises fails its batch only: the keys are recorded as failed and
    retried on the next run, the other batches go on, and the command exits with code 1 after
    printing the failing keys, the exception and the traceback of your code.
    """
    _run(obj, obj.app.steps, loop, loop_delay, max_loops, fail_fast)


# ---------------------------------------------------------------- step


@cli.group()
def step() -> None:
    """Inspect and run individual steps."""


def _step_kind(s: ComputeStep) -> str:
    return type(s).__name__.removesuffix("Step")


@step.command("list")
@step_filters
@click.option("--status", is_flag=True, help="Also show processed, pending and failed keys (queries the metadata).")
@click.pass_obj
def step_list(obj: CliContext, names: Optional[str], labels: Sequence[str], status: bool) -> None:
    """List steps: kind, inputs -> outputs, labels (and status)."""
    steps = select_steps(obj.app.steps, names, labels) if (names or labels) else obj.app.steps
    headers = ["step", "kind", "inputs -> outputs", "labels"]
    if status:
        headers += ["processed", "pending", "failed", "last error"]
    rows = []
    for s in steps:
        io = f"{','.join(ci.name for ci in s.input_dts) or '-'} -> {','.join(co.name for co in s.output_dts) or '-'}"
        row: List[Any] = [s.name, _step_kind(s), io, ",".join(f"{k}={v}" for k, v in s.labels) or "-"]
        if status:
            row += _step_status(obj, s)
        rows.append(row)
    print_table(headers, rows)


def _step_status(obj: CliContext, s: ComputeStep) -> List[Any]:
    st = s.get_status(obj.app.ds)
    if st.failed_idx_count is None:
        return ["-", "-", "-", ""]
    error = mask_url(st.last_error.splitlines()[0] if st.last_error else "")
    return [st.total_idx_count, st.changed_idx_count, st.failed_idx_count, error[:100]]


@step.command("run")
@step_filters
@_loop_options
@click.pass_obj
def step_run(
    obj: CliContext,
    names: Optional[str],
    labels: Sequence[str],
    loop: bool,
    loop_delay: float,
    max_loops: int,
    fail_fast: Optional[bool],
) -> None:
    """Run the selected steps (in pipeline order)."""
    _run(obj, select_steps(obj.app.steps, names, labels), loop, loop_delay, max_loops, fail_fast)


@step.command("reset-metadata")
@step_filters
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation when resetting every step.")
@click.pass_obj
def step_reset_metadata(obj: CliContext, names: Optional[str], labels: Sequence[str], yes: bool) -> None:
    """Forget what the selected steps processed: their next run processes everything.

    Without --name or --labels this resets every step, and asks first (unless --yes).
    """
    selected = select_steps(obj.app.steps, names, labels)
    if not (names or labels or yes):
        click.confirm(
            f"Reset the metadata of all {len(selected)} step(s)? Their next run reprocesses everything",
            abort=True,
            err=True,
        )
    for s in selected:
        s.reset_metadata(obj.app.ds)
        click.echo(f"reset {s.name}")


def parse_idx(values: Sequence[str], step: ComputeStep) -> pd.DataFrame:
    """Keys from ``--idx`` values: JSON (an object or a list of objects) or ``key=value,key=value``."""
    records: List[Dict[str, Any]] = []
    for value in values:
        value = value.strip()
        if value.startswith(("{", "[")):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as e:
                raise CliUsageError(f"--idx {value!r}: invalid JSON ({e})") from e
            items = parsed if isinstance(parsed, list) else [parsed]
            if not all(isinstance(i, dict) for i in items):
                raise CliUsageError(f"--idx {value!r}: expected a JSON object or a list of objects")
            records.extend(items)
        else:
            record = {}
            for item in filter(None, (v.strip() for v in value.split(","))):
                key, sep, val = item.partition("=")
                if not sep or not key:
                    raise CliUsageError(f"--idx {item!r}: expected key=value[,key=value] or JSON")
                record[key] = val
            records.append(record)
    return _typed_idx(records, step)


def _typed_idx(records: List[Dict[str, Any]], step: ComputeStep) -> pd.DataFrame:
    schema = step.transform_schema
    keys = [str(c.name) for c in schema] if schema is not None else sorted({k for r in records for k in r})
    df = pd.DataFrame.from_records(records)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise CliUsageError(f"--idx: step {step.name!r} needs key column(s) {keys}; missing {missing}")
    extra = [c for c in df.columns if c not in keys]
    if extra:
        raise CliUsageError(f"--idx: {extra} are not keys of step {step.name!r} (keys: {keys})")
    for col in schema or []:
        py = python_type(col.type)
        if py is None:
            continue
        try:
            df[str(col.name)] = df[str(col.name)].map(py)
        except (TypeError, ValueError) as e:
            raise CliUsageError(f"--idx: key {col.name!r} must be {py.__name__}: {e}") from e
    return df[keys]


@step.command("run-idx")
@step_filters
@click.option(
    "--idx",
    "idx_values",
    multiple=True,
    required=True,
    help='Keys to process: key=value[,key=value] (repeatable) or JSON, e.g. \'[{"id": 1}, {"id": 2}]\'.',
)
@click.pass_obj
def step_run_idx(obj: CliContext, names: Optional[str], labels: Sequence[str], idx_values: Sequence[str]) -> None:
    """Process the given keys with the selected steps, whether or not they changed."""
    from datapipe.progress import RunStats

    steps = select_steps(obj.app.steps, names, labels)
    parsed = [(s, parse_idx(idx_values, s)) for s in steps]
    stats = RunStats()
    run_config = RunConfig(callback=obj.callbacks(stats))
    failed = []
    for s, idx in parsed:
        changes = s.run_idx(obj.app.ds, idx, run_config)
        n = sum(len(v) for v in changes.changes.values())
        click.echo(f"{s.name}: processed {len(idx)} key(s), {n} output key(s) changed")
        if stats.steps[s.name].failed:
            failed.append(f"{s.name}: {stats.steps[s.name].errors[0]}")
    if failed:
        raise CliError("failed: " + "; ".join(failed))


# ---------------------------------------------------------------- table, db


def store_kind(store: Any) -> str:
    """The registered kind name of ``store``'s class, or its class name."""
    from datapipe.plugins import registry

    cls = type(store)
    path = f"{cls.__module__}:{cls.__qualname__}"
    for kind, factory in registry.table_store_kinds().items():
        if factory == path or factory is cls:
            return kind
    return cls.__name__


@cli.group()
def table() -> None:
    """Inspect tables."""


@table.command("list")
@click.pass_obj
def table_list(obj: CliContext) -> None:
    """List tables: name, store kind, store, live rows (from the metadata)."""
    app = obj.app
    rows = []
    for name in sorted(app.catalog.catalog):
        dt = app.catalog.get_datatable(app.ds, name)
        text = dt.table_store.describe()
        rows.append([name, store_kind(dt.table_store), mask_url(text), dt.get_size()])
    print_table(["table", "kind", "store", "rows"], rows)


@cli.group()
def db() -> None:
    """Manage the databases of the pipeline."""


@db.command("create-all")
@click.pass_obj
def db_create_all(obj: CliContext) -> None:
    """Create every metadata and SQL data table of the pipeline (existing tables are kept)."""
    from datapipe.sql.connection import DBConn
    from datapipe.store.database import TableStoreDB

    app = obj.app
    conns: List[DBConn] = [app.ds.meta_dbconn]
    for name in app.catalog.catalog:
        store = app.catalog.get_datatable(app.ds, name).table_store
        if isinstance(store, TableStoreDB) and all(store.dbconn is not c for c in conns):
            conns.append(store.dbconn)
    for conn in conns:
        try:
            conn.sqla_metadata.create_all(conn.con, checkfirst=True)
        except Exception as e:
            raise CliError(f"database {mask_url(conn.connstr)}: {_one_line(e)}") from e
        click.echo(f"{mask_url(conn.connstr)}: {len(conn.sqla_metadata.tables)} tables ensured")


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: CliContext) -> None:
    """Upgrade a metadata database written by an earlier Datapipe to change versions, keeping what
    every step has processed (keys pending before the upgrade stay pending)."""
    from datapipe.meta.upgrade import upgrade_metadata
    from datapipe.step.batch_transform import BaseBatchTransformStep

    app = obj.app
    tables = [app.ds.get_table(name).meta for name in app.ds.tables]
    steps = [(s.meta, s.changes) for s in app.steps if isinstance(s, BaseBatchTransformStep)]
    try:
        report = upgrade_metadata(app.ds.meta_dbconn, tables, steps)
    except Exception as e:
        raise CliError(f"upgrade of {mask_url(app.ds.meta_dbconn.connstr)} failed: {_one_line(e)}") from e
    for step_name, pending in report.steps:
        click.echo(f"step {step_name}: {pending} key(s) pending")
    click.echo(f"{mask_url(app.ds.meta_dbconn.connstr)}: {report.summary()}")


@db.command("adopt")
@click.option("--dry-run", is_flag=True, help="Print what would change and change nothing.")
@click.pass_obj
def db_adopt(obj: CliContext, dry_run: bool) -> None:
    """Take over a metadata database written by datapipe 0.15, so the next run processes nothing
    that 0.15 had already processed. Stop the 0.15 runners first. Safe to re-run or interrupt."""
    from datapipe.meta.adopt import AdoptRefused, adopt_metadata
    from datapipe.step.batch_transform import BaseBatchTransformStep
    from datapipe.store.database import no_table_creation

    with no_table_creation():  # loading the pipeline must not change a database adopt may refuse
        app = obj.app
        tables = [app.ds.get_table(name) for name in app.ds.tables]
    steps = [(s.meta, s.changes) for s in app.steps if isinstance(s, BaseBatchTransformStep)]
    try:
        report = adopt_metadata(app.ds.meta_dbconn, tables, steps, dry_run=dry_run)
    except AdoptRefused as e:
        raise CliError(f"adopt refused, nothing was changed: {mask_url(str(e))}") from e
    except Exception as e:
        raise CliError(
            f"adopt of {mask_url(app.ds.meta_dbconn.connstr)} failed: {_one_line(e)} (re-run it to finish)"
        ) from e
    if dry_run:
        for line in report.plan.describe():
            click.echo(line)
        click.echo("dry run: nothing was changed")
        return
    click.echo(report.summary())


# ---------------------------------------------------------------- plugins, graph


@cli.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
def plugins_list() -> None:
    """Every installed plugin: distribution, version, store kinds, executors, load errors."""
    from datapipe.plugins import list_plugins

    rows = [
        [
            p.name,
            p.distribution,
            p.version,
            ",".join(p.store_kinds) or "-",
            ",".join(p.executors) or "-",
            f"ERROR {p.error}" if p.error else "ok",
        ]
        for p in list_plugins()
    ]
    print_table(["plugin", "distribution", "version", "store kinds", "executors", "status"], rows)


def _node_id(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def _table_names(steps: Sequence[ComputeStep]) -> List[str]:
    """Every table the steps read or write, in first-seen order."""
    names: Dict[str, None] = {}
    for s in steps:
        for name in [ci.name for ci in s.input_dts] + [co.name for co in s.output_dts]:
            names.setdefault(name)
    return list(names)


def mermaid(steps: Sequence[ComputeStep]) -> str:
    """The pipeline as a Mermaid flowchart: tables as cylinders, steps as boxes."""
    lines = ["flowchart LR"]
    tables = _table_names(steps)
    lines += [f'    {_node_id("t_", t)}[("{_label(t)}")]' for t in tables]
    lines += [f'    {_node_id("s_", s.name)}[["{_label(s.name)}"]]' for s in steps]
    for s in steps:
        lines += [f"    {_node_id('t_', ci.name)} --> {_node_id('s_', s.name)}" for ci in s.input_dts]
        lines += [f"    {_node_id('s_', s.name)} --> {_node_id('t_', co.name)}" for co in s.output_dts]
    return "\n".join(lines)


def dot(steps: Sequence[ComputeStep]) -> str:
    """The pipeline as a Graphviz digraph."""
    lines = ["digraph pipeline {", "    rankdir=LR;"]
    tables = _table_names(steps)
    lines += [f'    "{_node_id("t_", t)}" [label="{t}", shape=cylinder];' for t in tables]
    lines += [f'    "{_node_id("s_", s.name)}" [label="{s.name}", shape=box];' for s in steps]
    for s in steps:
        lines += [f'    "{_node_id("t_", ci.name)}" -> "{_node_id("s_", s.name)}";' for ci in s.input_dts]
        lines += [f'    "{_node_id("s_", s.name)}" -> "{_node_id("t_", co.name)}";' for co in s.output_dts]
    lines.append("}")
    return "\n".join(lines)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@click.pass_obj
def graph(obj: CliContext, fmt: str) -> None:
    """Print the pipeline graph (tables and steps) as Mermaid or Graphviz DOT text.

    Needs no database: the pipeline is loaded without connecting to one.
    """
    from datapipe.store.database import offline

    with offline():
        steps = obj.app.steps
    click.echo(mermaid(steps) if fmt == "mermaid" else dot(steps))


# ---------------------------------------------------------------- entry point

_plugins_registered = False


def _register_plugins() -> None:
    global _plugins_registered
    if _plugins_registered:
        return
    _plugins_registered = True
    from datapipe.plugins import register_cli_commands

    for error in register_cli_commands(cli):
        click.echo(f"Warning: {error}", err=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point (``datapipe``)."""
    _register_plugins()
    cli.main(args=list(argv) if argv is not None else None, prog_name="datapipe")


if __name__ == "__main__":  # pragma: no cover
    main()

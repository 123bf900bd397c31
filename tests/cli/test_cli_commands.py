"""Every ``datapipe`` command against the multi-step pipeline (``multi_pipeline.py``) on SQLite."""

from pathlib import Path

import pandas as pd
import pytest

from datapipe.cli import cli
from datapipe.hookspecs import hookimpl
from datapipe.plugins import register_cli_commands, registry
from datapipe.run_callback import RunCallback
from datapipe.store.database import DBConn

GOLDEN = Path(__file__).parent / "golden"


def read_table(db_url: str, name: str) -> pd.DataFrame:
    conn = DBConn(db_url)
    try:
        return pd.read_sql_table(name, conn.con).sort_values("id").reset_index(drop=True)
    finally:
        conn.con.dispose()


def step_rows(output: str) -> dict:
    """``step list`` output as {step: [columns...]} (columns split on runs of 2+ spaces)."""
    import re

    lines = output.strip().splitlines()[1:]
    return {cols[0]: cols for cols in (re.split(r"\s{2,}", line.strip()) for line in lines)}


# ---------------------------------------------------------------- run


def test_run_processes_everything_and_prints_summary(dp, db_url):
    result = dp("run")
    assert result.exit_code == 0, result.output
    assert read_table(db_url, "squared")["value"].tolist() == [(2 * i) ** 2 for i in range(10)]
    assert read_table(db_url, "evens")["id"].tolist() == [0, 2, 4, 6, 8]
    assert "datapipe run summary" in result.stderr
    summary = {line.split()[0]: line.split()[1:] for line in result.stderr.splitlines() if line.strip()}
    # processed, changed, deleted, failed
    assert summary["double"][:4] == ["10", "10", "0", "0"]
    assert summary["split"][:4] == ["10", "10", "0", "0"]
    # not a terminal: no progress bars
    assert "batches" not in result.stderr and "rows/s" not in result.stderr


def test_incremental_rerun_and_deletes(dp, db_url):
    assert dp("run").exit_code == 0
    result = dp("run", N_ITEMS="7")
    assert result.exit_code == 0, result.output
    summary = {line.split()[0]: line.split()[1:] for line in result.stderr.splitlines() if line.strip()}
    assert summary["double"][:4] == ["3", "0", "3", "0"]
    assert read_table(db_url, "squared")["id"].tolist() == list(range(7))
    again = dp("run", N_ITEMS="7")
    summary = {line.split()[0]: line.split()[1:] for line in again.stderr.splitlines() if line.strip()}
    assert summary["double"][:4] == ["0", "0", "0", "0"]


def test_loop_runs_repeatedly(dp):
    result = dp("run", "--loop", "--loop-delay", "0", "--max-loops", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("datapipe run summary") == 3


def test_explicit_executor(dp, db_url):
    result = dp("--executor", "single_thread", "run")
    assert result.exit_code == 0, result.output
    assert len(read_table(db_url, "odds")) == 5


def test_failed_batch_gives_exit_code_1_and_is_listed(dp, db_url):
    result = dp("run", FAIL_ID="4")
    assert result.exit_code == 1
    # per failed step: the failing keys, the exception, and the frames of the user's function
    lines = result.stderr[result.stderr.index("Error: step") + len("Error: "):].splitlines()
    assert lines[:4] == [
        "step square: 3 key(s) failed in 1 batch(es)",
        "  keys: {id=3}, {id=4}, {id=5}",
        "  ValueError: cannot square id 4",
        "  traceback (your code):",
    ]
    assert "multi_pipeline.py" in lines[4] and "in square" in lines[4]
    assert 'raise ValueError(f"cannot square id {fail}")' in lines[5]
    assert "Traceback (most recent call last)" not in result.output and "batch_transform.py" not in result.output
    assert "--debug shows full tracebacks" in result.stderr
    debug = dp("--debug", "run", FAIL_ID="4")
    assert debug.exit_code == 1 and "batch_transform.py" in debug.stderr and "in square" in debug.stderr
    assert read_table(db_url, "squared")["id"].tolist() == [0, 1, 2, 6, 7, 8, 9]
    status = step_rows(dp("step", "list", "--status").stdout)
    # step, kind, io, labels, processed, pending, failed, last error
    assert status["square"][4:] == ["10", "3", "3", "ValueError: cannot square id 4"]
    assert status["double"][4:] == ["10", "0", "0"]
    fixed = dp("run")
    assert fixed.exit_code == 0, fixed.output
    assert step_rows(dp("step", "list", "--status").stdout)["square"][4:] == ["10", "0", "0"]
    assert len(read_table(db_url, "squared")) == 10


# ---------------------------------------------------------------- step


def test_step_list(dp):
    result = dp("step", "list")
    assert result.exit_code == 0, result.output
    rows = step_rows(result.stdout)
    assert list(rows) == ["load_items", "double", "square", "split"]
    assert rows["double"] == ["double", "BatchTransform", "items -> doubled", "stage=compute"]
    assert rows["split"][2] == "items -> evens,odds"
    assert rows["load_items"][1:] == ["BatchGenerate", "- -> items", "stage=load"]
    assert list(step_rows(dp("step", "list", "--labels", "stage=compute").stdout)) == ["double", "square"]


def test_step_list_status_before_and_after(dp):
    assert dp("step", "run", "--name", "load_items").exit_code == 0
    before = step_rows(dp("step", "list", "--status").stdout)
    assert before["double"][4:] == ["0", "10", "0"]
    assert before["load_items"][4:] == ["-", "-", "-"]
    assert dp("run").exit_code == 0
    after = step_rows(dp("step", "list", "--status").stdout)
    assert after["double"][4:] == ["10", "0", "0"]


@pytest.mark.parametrize(
    "filters, expected",
    [
        (["--name", "load_items,dou"], ["items", "doubled"]),  # comma list, prefix
        (["--name", "load_items,double,split"], ["items", "doubled", "evens", "odds"]),
        (["--labels", "stage=load"], ["items"]),
    ],
)
def test_step_run_filters(dp, db_url, filters, expected):
    result = dp("step", "run", *filters)
    assert result.exit_code == 0, result.output
    tables = step_rows(dp("table", "list").stdout)
    non_empty = [name for name, cols in tables.items() if cols[-1] != "0"]
    assert sorted(non_empty) == sorted(expected)


def test_step_run_labels_and_name_combined(dp):
    assert dp("step", "run", "--name", "load_items").exit_code == 0
    result = dp("step", "run", "--labels", "stage=compute,heavy=yes")
    assert result.exit_code == 0, result.output
    # square ran (nothing to do: doubled is empty), double did not
    assert "square" in result.stderr and "double " not in result.stderr


def test_step_run_without_match_is_usage_error(dp):
    result = dp("step", "run", "--name", "nosuch")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: no step matches --name nosuch; steps: load_items, double, square, split"
    result = dp("step", "run", "--name", "double", "--labels", "heavy=yes")
    assert result.exit_code == 2
    assert "no step matches --name double --labels heavy=yes" in result.stderr
    bad = dp("step", "run", "--labels", "heavy")
    assert bad.exit_code == 2 and "expected key=value" in bad.stderr


def test_step_reset_metadata(dp):
    assert dp("run").exit_code == 0
    result = dp("step", "reset-metadata", "--name", "square")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "reset square"
    status = step_rows(dp("step", "list", "--status").stdout)
    assert status["square"][4:] == ["0", "10", "0"]
    assert status["double"][4:] == ["10", "0", "0"]
    rerun = dp("run")
    summary = {line.split()[0]: line.split()[1:] for line in rerun.stderr.splitlines() if line.strip()}
    assert summary["square"][:2] == ["10", "0"]  # processed again, nothing changed
    assert summary["double"][:1] == ["0"]


def test_step_run_idx(dp, db_url):
    assert dp("step", "run", "--name", "load_items").exit_code == 0
    result = dp("step", "run-idx", "--name", "double", "--idx", "id=1", "--idx", '[{"id": 2}, {"id": 5}]')
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "double: processed 3 key(s), 3 output key(s) changed"
    assert read_table(db_url, "doubled").to_dict("list") == {"id": [1, 2, 5], "value": [2, 4, 10]}
    status = step_rows(dp("step", "list", "--status", "--name", "double").stdout)
    assert status["double"][4:] == ["3", "7", "0"]


def test_step_run_idx_failure_and_bad_input(dp):
    assert dp("step", "run", "--name", "load_items,double").exit_code == 0
    failed = dp("step", "run-idx", "--name", "square", "--idx", "id=4", FAIL_ID="4")
    assert failed.exit_code == 1
    assert "Error: failed: square: ValueError: cannot square id 4" in failed.stderr
    bad_key = dp("step", "run-idx", "--name", "square", "--idx", "nope=1")
    assert bad_key.exit_code == 2 and "needs key column(s) ['id']; missing ['id']" in bad_key.stderr
    bad_json = dp("step", "run-idx", "--name", "square", "--idx", "[{id: 1}]")
    assert bad_json.exit_code == 2 and "invalid JSON" in bad_json.stderr
    bad_type = dp("step", "run-idx", "--name", "square", "--idx", "id=abc")
    assert bad_type.exit_code == 2 and "key 'id' must be int" in bad_type.stderr


# ---------------------------------------------------------------- table, db, plugins, graph


def test_table_list(dp, db_url):
    assert dp("run", N_ITEMS="6").exit_code == 0
    result = dp("table", "list")
    assert result.exit_code == 0, result.output
    rows = step_rows(result.stdout)
    assert list(rows) == ["doubled", "evens", "items", "odds", "squared"]
    assert rows["items"][1] == "sql"
    assert rows["items"][2] == f"TableStoreDB('items' in {db_url})"
    assert {name: cols[3] for name, cols in rows.items()} == {
        "doubled": "6", "evens": "3", "items": "6", "odds": "3", "squared": "6"
    }


def test_db_create_all(dp):
    missing = dp("run", NO_CREATE="1")
    assert missing.exit_code == 1
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: StoreError: database sqlite:///") and last.endswith("no such table: items_meta")
    assert "Traceback" not in missing.output
    created = dp("db", "create-all", NO_CREATE="1")
    assert created.exit_code == 0, created.output
    assert "tables ensured" in created.stdout
    assert dp("run", NO_CREATE="1").exit_code == 0
    assert dp("db", "create-all", NO_CREATE="1").exit_code == 0  # idempotent


def test_plugins_list(dp):
    result = dp("plugins", "list", pipeline=None)
    assert result.exit_code == 0, result.output
    rows = step_rows(result.stdout)
    core = rows["core"]
    assert core[1] == "datapipe-core"
    assert set(core[3].split(",")) >= {"sql", "filedir", "jsonline"}
    assert core[4] == "ray,single_thread" and core[5] == "ok"


def test_plugins_list_shows_load_errors(dp, monkeypatch):
    from datapipe.plugins import PluginInfo

    broken = PluginInfo("broken", "datapipe-broken", "0.1", "datapipe_broken.plugin", error="ImportError: nope")
    monkeypatch.setattr(registry, "plugins", [*registry.list_plugins(), broken])
    rows = step_rows(dp("plugins", "list", pipeline=None).stdout)
    assert rows["broken"][1:] == ["datapipe-broken", "0.1", "-", "-", "ERROR ImportError: nope"]


def test_graph_mermaid_golden(dp):
    result = dp("graph")
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN / "multi_pipeline.mmd").read_text()


def test_graph_dot_golden(dp):
    result = dp("graph", "--format", "dot")
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN / "multi_pipeline.dot").read_text()


# ---------------------------------------------------------------- errors


def test_bad_pipeline_module(dp):
    result = dp("run", pipeline="no_such_module:app")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --pipeline 'no_such_module:app': cannot import module 'no_such_module'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_pipeline_attribute_and_type(dp):
    missing = dp("run", pipeline="multi_pipeline:nope")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "Error: --pipeline 'multi_pipeline:nope': module 'multi_pipeline' has no attribute 'nope'"
    )
    wrong = dp("run", pipeline="multi_pipeline:schema")
    assert wrong.exit_code == 2 and "'schema' is a list, not a DatapipeApp" in wrong.stderr


def test_pipeline_that_fails_on_import(dp):
    result = dp("run", pipeline="broken_pipeline:app")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: --pipeline 'broken_pipeline:app': importing 'broken_pipeline' failed: "
        "RuntimeError: the pipeline module is broken on purpose"
    )


def test_debug_shows_traceback(dp):
    result = dp("--debug", "step", "list", pipeline=None, DATAPIPE_PIPELINE="multi_pipeline:app", FAIL_ID="1",
                NO_CREATE="1")
    assert result.exit_code == 0  # listing without --status does not touch the database
    crash = dp("--debug", "run", NO_CREATE="1")
    assert crash.exit_code != 0
    assert crash.exception is not None and "no such table" in str(crash.exception)


def test_unknown_executor(dp):
    result = dp("--executor", "warp", "run")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: unknown executor 'warp'; installed: ray, single_thread"


def test_unreachable_database_masks_password(dp):
    from datapipe.testing.services import free_port

    pytest.importorskip("psycopg")
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{free_port()}/nodb"
    for args in (["run"], ["step", "list", "--status"], ["table", "list"]):
        result = dp(*args, DATAPIPE_DB=url)
        assert result.exit_code == 1, result.output
        assert "s3cret-pw" not in result.output
        assert "alice:***@127.0.0.1" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error: StoreError: database postgresql")
        assert "Traceback" not in result.output


# ---------------------------------------------------------------- plugins: callbacks and CLI extension


class Recorder(RunCallback):
    def __init__(self) -> None:
        self.events = []

    def on_run_start(self, steps):
        self.events.append(("start", [s.name for s in steps]))

    def on_step_progress(self, step, completed, total, **stats):
        self.events.append(("progress", step.name, completed, total))


class CallbackPlugin:
    def __init__(self) -> None:
        self.recorder = Recorder()

    @hookimpl
    def datapipe_run_callbacks(self):
        return [self.recorder]


@pytest.fixture
def callback_plugin():
    plugin = CallbackPlugin()
    registry.pm.register(plugin, name="test-callbacks")
    yield plugin
    registry.pm.unregister(plugin)


def test_plugin_callbacks_and_no_callbacks(dp, callback_plugin):
    assert dp("--no-callbacks", "step", "run", "--name", "load_items").exit_code == 0
    assert callback_plugin.recorder.events == []
    assert dp("run").exit_code == 0
    events = callback_plugin.recorder.events
    assert events[0] == ("start", ["load_items", "double", "square", "split"])
    assert ("progress", "double", 4, 4) in events


class CliPlugin:
    @hookimpl
    def datapipe_cli(self, cli):
        import click

        @cli.command("hello")
        def hello():
            """Say hello (added by a plugin)."""
            click.echo("hello from a plugin")


class BrokenCliPlugin:
    @hookimpl
    def datapipe_cli(self, cli):
        raise RuntimeError("cannot add commands")


def test_plugin_cli_commands(dp):
    plugins = [CliPlugin(), BrokenCliPlugin()]
    for n, p in enumerate(plugins):
        registry.pm.register(p, name=f"test-cli-{n}")
    try:
        errors = register_cli_commands(cli)
        assert errors == ["plugin test-cli-1: RuntimeError: cannot add commands"]
        result = dp("hello", pipeline=None)
        assert result.exit_code == 0 and result.stdout == "hello from a plugin\n"
    finally:
        for p in plugins:
            registry.pm.unregister(p)
        cli.commands.pop("hello", None)


# ---------------------------------------------------------------- db upgrade


def _downgrade_to_timestamp_schema(db_url: str) -> None:
    """Reshape every metadata table as Datapipe wrote it before change versions (SQLite)."""
    from sqlalchemy import inspect, text

    conn = DBConn(db_url)
    with conn.con.begin() as con:
        insp = inspect(con)
        for table in insp.get_table_names():
            columns = {c["name"] for c in insp.get_columns(table)}
            if "version" in columns and table.endswith("_meta"):
                con.execute(text(f"DROP INDEX ix_{table}_version"))
                con.execute(text(f"ALTER TABLE {table} DROP COLUMN version"))
            for column in ("seen_below", "seen_pending"):
                if column in columns and table.endswith("_meta"):
                    con.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        con.execute(text("DROP TABLE datapipe_watermarks"))
        con.execute(text("CREATE TABLE datapipe_watermarks (step VARCHAR(255), input VARCHAR(255), watermark FLOAT)"))
        con.execute(text("DROP TABLE datapipe_version"))
    conn.con.dispose()


def test_db_upgrade_of_a_timestamp_schema_keeps_processed_state(dp, db_url):
    assert dp("run").exit_code == 0
    _downgrade_to_timestamp_schema(db_url)
    refused = dp("run")
    assert refused.exit_code == 1
    assert "run `datapipe db upgrade`" in refused.stderr and "Traceback" not in refused.output
    upgraded = dp("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert "step double: 0 key(s) pending" in upgraded.stdout
    rerun = dp("run")
    summary = {line.split()[0]: line.split()[1:] for line in rerun.stderr.splitlines() if line.strip()}
    assert rerun.exit_code == 0, rerun.output
    assert summary["double"][:4] == ["0", "0", "0", "0"] and summary["split"][:4] == ["0", "0", "0", "0"]
    assert "already up to date" in dp("db", "upgrade").stdout

"""The rough edges of a new user's first hour (issue 13), through the real command line."""

from pathlib import Path

import pytest
from conftest import HERE, run_datapipe
from test_cli_commands import step_rows

from datapipe.testing.services import free_port


def test_reset_all_steps_asks_first(dp):
    assert dp("run").exit_code == 0
    refused = dp("step", "reset-metadata", input="n\n")  # click's CliRunner feeds stdin
    assert refused.exit_code == 1 and "Reset the metadata of all 4 step(s)?" in refused.output
    assert step_rows(dp("step", "list", "--status").stdout)["square"][4:6] == ["10", "0"]  # nothing reset
    confirmed = dp("step", "reset-metadata", input="y\n")
    assert confirmed.exit_code == 0 and "reset square" in confirmed.stdout
    assert step_rows(dp("step", "list", "--status").stdout)["square"][4:6] == ["0", "10"]


def test_reset_with_yes_or_a_name_does_not_ask(dp):
    assert dp("run").exit_code == 0
    named = dp("step", "reset-metadata", "--name", "square")  # no input: a prompt would abort
    assert named.exit_code == 0 and named.stdout.strip() == "reset square"
    everything = dp("step", "reset-metadata", "--yes")
    assert everything.exit_code == 0 and len(everything.stdout.splitlines()) == 4


def test_graph_needs_no_database(dp):
    url = f"postgresql://user:secret@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    result = dp("graph", DATAPIPE_DB=url)
    assert result.exit_code == 0, result.output
    assert "s_square --> t_squared" in result.stdout
    assert dp("step", "list", "--status", DATAPIPE_DB=url).exit_code == 1  # a command that needs it still fails


def test_bad_database_url_is_one_line(dp):
    result = dp("step", "list", DATAPIPE_DB="postgress://user:secret@host/db")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr
    assert "unknown database kind 'postgress'" in result.stderr and "Traceback" not in result.stderr


def test_pipeline_given_as_a_file_path(tmp_path: Path):
    env = {"DATAPIPE_DB": f"sqlite:///{tmp_path}/p.sqlite"}
    path = HERE / "multi_pipeline.py"
    for spec in (f"{path}:app", str(path), "multi_pipeline.py:app"):
        cwd = HERE if not spec.startswith("/") else tmp_path
        result = run_datapipe(["--pipeline", spec, "step", "list"], cwd=cwd, env=env)
        assert result.returncode == 0, (spec, result.stderr)
        assert "square" in result.stdout
    missing = run_datapipe(["--pipeline", "nowhere/app.py:app", "step", "list"], cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_help_documents_fail_fast_and_environment(dp):
    top = dp("--help", pipeline=None)
    for name in ("DATAPIPE_PIPELINE", "DATAPIPE_FAIL_FAST", "DATAPIPE_STEP_LOCK", "DATAPIPE_STEP_LOCK_TIMEOUT"):
        assert name in top.stdout
    run_help = dp("run", "--help", pipeline=None)
    assert "--fail-fast" in run_help.stdout and "DATAPIPE_FAIL_FAST" in run_help.stdout


def test_fail_fast_flag_stops_at_the_first_error(dp):
    result = dp("run", "--fail-fast", FAIL_ID="4")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: ValueError: cannot square id 4"


def test_missing_ray_hint_is_given_once(tmp_path: Path):
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("ray")  # the distribution: tests/ray would shadow an import check
    except PackageNotFoundError:
        pass
    else:
        pytest.skip("ray is installed in this environment")
    # a subprocess: in this process the tests/ray folder would be importable as "ray"
    env = {"DATAPIPE_DB": f"sqlite:///{tmp_path}/p.sqlite"}
    result = run_datapipe(["--pipeline", "multi_pipeline:app", "--executor", "ray", "run"], cwd=HERE, env=env)
    assert result.returncode == 2 and result.stderr.count("pip install") == 1, result.stderr

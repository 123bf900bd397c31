"""Fixtures for the CLI tests: a fresh SQLite database per test and a CliRunner wrapper."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest
from click.testing import CliRunner, Result

from datapipe.cli import _register_plugins, cli

HERE = Path(__file__).parent


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/pipeline.sqlite"


@pytest.fixture
def dp(db_url: str):
    """``dp(*args, **env)``: run ``datapipe --pipeline multi_pipeline:app *args`` in-process."""
    _register_plugins()
    runner = CliRunner()

    def invoke(
        *args: str, pipeline: Optional[str] = "multi_pipeline:app", input: Optional[str] = None, **env: str
    ) -> Result:
        full = (["--pipeline", pipeline] if pipeline else []) + list(args)
        environ = {"DATAPIPE_DB": db_url, "FAIL_ID": None, "N_ITEMS": None, "NO_CREATE": None, **env}
        return runner.invoke(cli, full, env=environ, input=input)

    return invoke


def datapipe_executable() -> str:
    exe = Path(sys.executable).parent / "datapipe"
    found = str(exe) if exe.exists() else shutil.which("datapipe")
    assert found, "the datapipe console script is not installed"
    return found


def run_datapipe(args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """The real console script in a subprocess (stdout/stderr are pipes, i.e. not a TTY)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DATAPIPE_DB", "N_ROWS", "COLUMNS")}
    environ.update(env or {})
    return subprocess.run(
        [datapipe_executable(), *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )

"""The real ``datapipe`` console script in a subprocess, on the quickstart-style pipeline.

``quickstart_pipeline.py`` is copied to ``app.py`` in a temporary working directory, so the
default ``--pipeline app:app`` and the working directory on ``sys.path`` are exercised.
"""

import os
import shutil
from pathlib import Path

import pytest
from conftest import HERE, run_datapipe


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(HERE / "quickstart_pipeline.py", tmp_path / "app.py")
    return tmp_path


def test_quickstart_run_with_default_pipeline(workdir):
    first = run_datapipe(["run"], workdir)
    assert first.returncode == 0, first.stderr
    assert (workdir / "quickstart.sqlite").exists()
    assert "datapipe run summary" in first.stderr
    summary = {line.split()[0]: line.split()[1:] for line in first.stderr.splitlines() if line.strip()}
    assert summary["upper"][:4] == ["10", "10", "0", "0"]
    assert "rows/s" not in first.stderr and "\x1b[" not in first.stderr  # not a TTY: no bars, no colours

    tables = run_datapipe(["table", "list"], workdir)
    assert tables.returncode == 0, tables.stderr
    rows = {line.split()[0]: line.split() for line in tables.stdout.splitlines()[1:]}
    assert rows["upper_words"][1] == "sql" and rows["upper_words"][-1] == "10"

    shrink = run_datapipe(["run"], workdir, {"N_ROWS": "6"})
    assert shrink.returncode == 0, shrink.stderr
    summary = {line.split()[0]: line.split()[1:] for line in shrink.stderr.splitlines() if line.strip()}
    assert summary["upper"][:4] == ["4", "0", "4", "0"]
    rows = {line.split()[0]: line.split() for line in run_datapipe(["table", "list"], workdir).stdout.splitlines()[1:]}
    assert rows["upper_words"][-1] == "6"


def test_quickstart_graph_and_plugins(workdir):
    graph = run_datapipe(["graph"], workdir)
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.splitlines() == [
        "flowchart LR",
        '    t_words[("words")]',
        '    t_upper_words[("upper_words")]',
        '    s_generate_words[["generate_words"]]',
        '    s_upper[["upper"]]',
        "    s_generate_words --> t_words",
        "    t_words --> s_upper",
        "    s_upper --> t_upper_words",
    ]
    plugins = run_datapipe(["plugins", "list"], workdir)
    assert plugins.returncode == 0 and "datapipe-core" in plugins.stdout


def test_missing_default_pipeline(tmp_path):
    result = run_datapipe(["run"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: --pipeline 'app:app': cannot import module 'app' from {tmp_path} (No module named 'app')"
    ]


def test_debug_prints_traceback(tmp_path):
    (tmp_path / "app.py").write_text("raise RuntimeError('boom at import')\n")
    plain = run_datapipe(["run"], tmp_path)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        "Error: --pipeline 'app:app': importing 'app' failed: RuntimeError: boom at import"
    ]
    debug = run_datapipe(["--debug", "run"], tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "boom at import" in debug.stderr


def test_unreachable_database_with_password_subprocess(tmp_path):
    pytest.importorskip("psycopg")
    from datapipe.testing.services import free_port

    shutil.copy(HERE / "quickstart_pipeline.py", tmp_path / "app.py")
    url = f"postgresql://bob:hunter2@127.0.0.1:{free_port()}/db"
    result = run_datapipe(["run"], tmp_path, {"DATAPIPE_DB": url})
    assert result.returncode == 1
    assert "hunter2" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --pipeline 'app:app': importing 'app' failed: StoreError")
    assert "bob:***@127.0.0.1" in lines[0]


def run_on_pty(args, cwd, env):
    """Run the console script with stdout/stderr on a pseudo-terminal; return everything it wrote."""
    import pty
    import select
    import subprocess

    from conftest import datapipe_executable

    master, slave = pty.openpty()
    proc = subprocess.Popen([datapipe_executable(), *args], cwd=cwd, env=env, stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_real_terminal(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("DATAPIPE_DB", "N_ROWS", "NO_COLOR")}
    env.update({"TERM": "xterm-256color", "COLUMNS": "160"})
    code, text = run_on_pty(["run"], workdir, env)
    assert code == 0, text
    assert "\x1b[" in text  # a live display
    assert "3/3" in text and "batches" in text and "10 rows" in text and "rows/s" in text
    assert "datapipe run summary" in text

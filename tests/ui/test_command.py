"""``datapipe ui`` as a command: refuses a non-loopback host without a token, serves the quickstart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ui_support import REPO

DATAPIPE = str(Path(sys.executable).with_name("datapipe"))


def datapipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATAPIPE_UI_TOKEN"}
    return subprocess.run([DATAPIPE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def quickstart_dir(tmp_path: Path) -> Path:
    target = tmp_path / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart", target, ignore=shutil.ignore_patterns("*.db", "out"))
    return target


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_non_loopback_host_needs_a_token(quickstart_dir, host):
    result = datapipe(quickstart_dir, "ui", "--host", host)
    assert result.returncode == 2
    assert f"--host {host} is not a loopback address" in result.stderr and "--token" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_command(quickstart_dir):
    result = datapipe(quickstart_dir, "--help")
    assert result.returncode == 0 and "ui " in result.stdout
    result = datapipe(quickstart_dir, "ui", "--help")
    assert "--read-only" in result.stdout and "DATAPIPE_UI_TOKEN" in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # waiting for a condition (the port accepts), with a deadline
        if proc.poll() is not None:
            raise AssertionError(f"datapipe ui exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("datapipe ui did not start listening")


def test_serves_the_quickstart_read_only_with_a_token_from_the_environment(quickstart_dir):
    port = _free_port()
    env = {**os.environ, "DATAPIPE_UI_TOKEN": "env-token"}
    proc = subprocess.Popen(
        [DATAPIPE, "ui", "--port", str(port), "--read-only"], cwd=quickstart_dir, env=env,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_listening(proc, port)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/steps").status_code == 401
        auth = {"Authorization": "Bearer env-token"}
        steps = httpx.get(f"{url}/api/steps", headers=auth).json()["steps"]
        assert [s["name"] for s in steps][0] == "update_products_90f135ef85"  # the 0.15 step name
        refused = httpx.post(f"{url}/api/runs", json={}, headers=auth)
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert f"datapipe ui: http://127.0.0.1:{port}/ (token required)" in proc.stderr.read()  # type: ignore[union-attr]

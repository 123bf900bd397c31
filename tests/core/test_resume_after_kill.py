"""A run killed with SIGKILL mid-way, then resumed, ends exactly like an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from datapipe.testing.services import create_database

SCRIPT = str(Path(__file__).with_name("crash_pipeline.py"))
TABLES = ["src", "mid", "fan"]


def run(url, *args):
    return subprocess.run([sys.executable, SCRIPT, url, *args], capture_output=True, text=True, timeout=300)


def snapshot(url):
    engine = create_engine(url)
    result = {}
    with engine.connect() as con:
        for name in TABLES:
            data = pd.read_sql(text(f"SELECT * FROM {name}"), con)
            result[name] = data.sort_values(list(data.columns)).reset_index(drop=True)
            meta = pd.read_sql(text(f"SELECT * FROM {name}_meta WHERE delete_ts IS NULL"), con)
            result[name + "_meta_keys"] = len(meta)
    engine.dispose()
    return result


@pytest.fixture(params=["sqlite", "postgres"])
def urls(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ref.db", f"sqlite:///{tmp_path}/crash.db"
    server = request.getfixturevalue("postgres_server_url")
    return create_database(server), create_database(server)


def test_killed_run_resumes_to_the_same_result(urls):
    ref_url, crash_url = urls
    assert run(ref_url).returncode == 0
    reference = snapshot(ref_url)
    assert len(reference["fan"]) == 4000

    killed = run(crash_url, "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = snapshot(crash_url)
    assert 0 < len(partial["fan"]) < 4000  # two batches committed before the kill

    resumed = run(crash_url)
    assert resumed.returncode == 0, resumed.stderr
    final = snapshot(crash_url)
    for name in TABLES:
        pd.testing.assert_frame_equal(final[name], reference[name])
        assert final[name + "_meta_keys"] == reference[name + "_meta_keys"]


def test_repeated_kills_at_random_moments(urls):
    """Kill from outside after random delays; every resumed run converges to the reference."""
    ref_url, crash_url = urls
    started = time.monotonic()
    assert run(ref_url).returncode == 0
    full_run = time.monotonic() - started
    reference = snapshot(ref_url)
    rng = random.Random(42)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, SCRIPT, crash_url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.25, 0.75) * full_run)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert run(crash_url).returncode == 0
    final = snapshot(crash_url)
    for name in TABLES:
        pd.testing.assert_frame_equal(final[name], reference[name])
    assert kills >= 1

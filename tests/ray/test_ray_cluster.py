"""``RAY_ADDRESS``: the CLI in a subprocess joins an existing Ray cluster started with ``ray start``."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pytest

from datapipe.store.database import DBConn
from datapipe.testing.services import free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0" makes Ray use the loopback address as the node address
# The cluster and its clients share an explicit auth token (Ray enables token auth for `ray start`).
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}


@pytest.fixture
def ray_cluster():
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="dpray")  # short: Ray's socket paths must stay under 107 bytes
    # Loopback only: Ray otherwise rewrites 127.0.0.1 to the host's network address, which a sandbox may not route.
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **AUTH, LOOPBACK: "0", "PYTHONPATH": pythonpath}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
           "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={temp_dir}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # blocks until the head node reports it is up
        seen.append(line)
        if "Ray runtime started" in line:
            break
    else:
        pytest.fail("ray start failed:\n" + "".join(seen))
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)  # the process group of the `ray start` we launched
    proc.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(240)
def test_cli_runs_on_existing_cluster(ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path}/cluster.sqlite"
    env = {**os.environ, **AUTH, LOOPBACK: "0", "RAY_ADDRESS": ray_cluster, "DATAPIPE_DB": url, "N_ROWS": "12"}
    result = subprocess.run(
        [str(BIN / "datapipe"), "--pipeline", "ray_pipelines:app", "--executor", "ray", "run"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=200,
    )
    assert result.returncode == 0, result.stderr
    conn = DBConn(url)
    out = pd.read_sql_table("out", conn.con).sort_values("id")
    conn.con.dispose()
    assert out["a"].tolist() == [f"w{i}!" for i in range(12)]

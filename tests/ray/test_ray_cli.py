"""``datapipe --executor ray`` through the CLI, on the session's local Ray."""

import pandas as pd
from click.testing import CliRunner

from datapipe.cli import cli
from datapipe.store.database import DBConn


def test_cli_run_with_ray_executor(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path}/ray_cli.sqlite"
    runner = CliRunner()
    args = ["--pipeline", "ray_pipelines:app", "--executor", "ray", "run"]
    result = runner.invoke(cli, args, env={"DATAPIPE_DB": url, "N_ROWS": "20"})
    assert result.exit_code == 0, result.output
    summary = {line.split()[0]: line.split()[1:] for line in result.stderr.splitlines() if line.strip()}
    assert summary["exclaim"][:4] == ["20", "20", "0", "0"]
    conn = DBConn(url)
    out = pd.read_sql_table("out", conn.con).sort_values("id")
    conn.con.dispose()
    assert out["a"].tolist() == [f"w{i}!" for i in range(20)]

    shrink = runner.invoke(cli, args, env={"DATAPIPE_DB": url, "N_ROWS": "14"})
    assert shrink.exit_code == 0, shrink.output
    summary = {line.split()[0]: line.split()[1:] for line in shrink.stderr.splitlines() if line.strip()}
    assert summary["exclaim"][:4] == ["6", "0", "6", "0"]

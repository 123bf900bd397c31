"""The CLI side of the security basics: label and key values are data, passwords stay hidden."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from cli_app import LABEL
from test_security import PAYLOADS, SECRET

cli_module = pytest.importorskip("datapipe.cli")


@pytest.fixture
def dp(dbconn, monkeypatch):
    from click.testing import CliRunner

    url = dbconn.connstr
    if "postgresql" in url:
        url = url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth: any password is accepted
    monkeypatch.setenv("RELIABILITY_CLI_URL", url)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli_module.cli, ["--pipeline", "cli_app:app", *args], catch_exceptions=False)

    from cli_app import app

    names = ["plain", *PAYLOADS]
    app().ds.get_table("inp").store_chunk(pd.DataFrame({"name": names, "v": range(len(names))}))
    invoke.names = names  # type: ignore[attr-defined]
    invoke.app = app  # type: ignore[attr-defined]
    return invoke


def _output(result) -> str:
    return result.output + (getattr(result, "stderr", "") or "")


def test_label_and_idx_payloads_are_data(dp):
    result = dp("step", "run-idx", "--labels", f"kind={LABEL}", "--idx", json.dumps([{"name": p} for p in PAYLOADS]))
    assert result.exit_code == 0, _output(result)
    ds = dp.app().ds
    assert sorted(ds.get_table("out").get_data()["name"]) == sorted(PAYLOADS)
    assert sorted(ds.get_table("inp").get_data()["name"]) == sorted(dp.names)
    result = dp("step", "run", "--labels", f"kind={LABEL}")
    assert result.exit_code == 0, _output(result)
    assert sorted(dp.app().ds.get_table("out").get_data()["name"]) == sorted(dp.names)


def test_password_not_in_cli_output_of_a_failing_run(dp, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RELIABILITY_CLI_FAIL", "1")
    for args in (("run",), ("--debug", "run"), ("step", "list", "--status"), ("table", "list")):
        result = dp(*args)
        text = _output(result)
        assert SECRET not in text, args
    assert "failing on purpose" in caplog.text or "failing on purpose" in text
    assert SECRET not in caplog.text

"""Kill the pipeline with SIGKILL many times; the final state must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os

import crash_pipeline as cp
import pytest
from compare import compare_pipelines
from conftest import KILLS, RECORDS, redis_store_available
from killer import kill_loop, run_child


def _redis_db_url(redis_url: str, db: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def redis_urls(request: pytest.FixtureRequest, meta_url_factory):
    """Two Redis databases (crashed run, reference run) when datapipe-redis is installed, else Nones."""
    if not redis_store_available():
        return None, None
    base = request.getfixturevalue("redis_url")
    kind = request.node.callspec.params["meta_url_factory"]
    first = 2 if kind == "sqlite" else 4
    return _redis_db_url(base, first), _redis_db_url(base, first + 1)


def test_sigkill_anywhere_then_resume_equals_uninterrupted_run(meta_url_factory, redis_urls, capsys):
    crashed_url, reference_url = meta_url_factory(), meta_url_factory()
    redis_crashed, redis_reference = redis_urls
    seed = int(os.environ.get("RELIABILITY_SEED", "20261126"))

    stats = kill_loop(crashed_url, RECORDS, KILLS, seed, redis_crashed)
    final = stats.versions
    cp.write_ext(crashed_url, final, RECORDS)
    assert run_child(crashed_url, final, RECORDS, redis_crashed).done
    cp.write_ext(reference_url, final, RECORDS)
    assert run_child(reference_url, final, RECORDS, redis_reference).done

    crashed = cp.build(crashed_url, final, RECORDS, redis_crashed)
    reference = cp.build(reference_url, final, RECORDS, redis_reference)
    comparison = compare_pipelines(crashed, reference)
    sizes = {t: crashed.catalog.get_datatable(crashed.ds, t).get_size() for t in comparison.tables}
    summary = {
        "metadata_db": crashed.ds.meta_dbconn.con.dialect.name,
        "records": RECORDS,
        "kills_total": stats.total,
        "kills_per_phase": dict(sorted(stats.kills.items())),
        "fault_points": dict(sorted(stats.faults.items())),
        "runs_finished_before_kill": stats.completed_runs,
        "input_versions": final + 1,
        "tables_compared": sizes,
        "data_differences": comparison.data_differences,
        "meta_differences": comparison.meta_differences,
        "step_problems": comparison.step_problems,
        "differences_total": comparison.total,
    }
    with capsys.disabled():
        print("\nCRASH SUMMARY " + json.dumps(summary))
    assert stats.total >= KILLS
    assert comparison.total == 0, summary
    for phase in cp.STEPS:
        assert stats.kills[phase] > 0, f"no kill landed in {phase}: {summary}"
    assert sum(stats.faults.values()) > 0, summary

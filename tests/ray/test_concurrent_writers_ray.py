"""Writers overlapping runs whose batches run on Ray (``RayExecutor``, a local 2-CPU Ray).

The scenario of ``tests/reliability/test_concurrent_writers.py`` with two writers updating, inserting and
deleting overlapping keys while a runner process loops ``run_steps(ds, steps, executor=RayExecutor())``;
then one more (single-process) run, and the output must equal the function of the final input with nothing
pending. Shares the child-process code of ``tests/reliability/writers.py``. Runs on SQLite and PostgreSQL.
"""

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "reliability"))  # before the forkserver starts

import writers as w  # noqa: E402

REPS = int(os.environ.get("CONCURRENT_REPS", "3"))

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(params=["sqlite", "postgres"])
def meta_url_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Fresh, empty metadata-database URLs of one kind."""
    counter = iter(range(1000))
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/db{next(counter)}.sqlite"
    from datapipe.tests.services import create_database

    server = request.getfixturevalue("postgres_server_url")
    return lambda: create_database(server)


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    yield
    w.kill_leftover_children()


def test_writers_while_ray_runner_loops(meta_url_factory):
    """Two writers on overlapping keys while batches run as Ray tasks: no change skipped, none stale."""

    def scenario(url: str) -> str:
        w.fill(url, 2000)
        go = w._ctx.Event()
        with w.looping_runner(url, chunk_size=200, executor="ray"):
            children = [
                w.Child("random_writer", url=url, seed=7 + i, chunks=200, key_range=(i * 300, i * 300 + 2000),
                        go=go, tag=f"w{i}", min_rows=50, max_rows=300)
                for i in range(2)
            ]
            go.set()
            stats = [c.result() for c in children]
        return f"(writers: {stats})"

    w.repeat(meta_url_factory, scenario, REPS)

"""Test sessions. `nox` runs every default session; `nox -s bench` runs the benchmarks.

Each backend session installs only datapipe-core plus that backend into a fresh virtualenv,
which proves the backend works without the others.
"""

import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [
    "lint", "docs", "core", "qdrant", "milvus", "cli", "ray", "redis", "elastic", "plugins", "reliability", "ui",
    "adopt",
]

CORE = "./packages/datapipe-core"
TEST_DEPS = ["pytest>=8", "pytest-timeout"]


def install_core(session: nox.Session, extras: str = "postgres") -> None:
    session.install("-e", f"{CORE}[{extras}]" if extras else CORE, *TEST_DEPS)


@nox.session
def core(session: nox.Session) -> None:
    """Core engine tests on SQLite and PostgreSQL."""
    install_core(session, "postgres,image,parquet,excel")
    session.run("pytest", "tests/core", *session.posargs)


DOCS_DEPS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", "mkdocs-click>=0.8"]


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: run every tutorial snippet, then `mkdocs build --strict` (into site/)."""
    install_core(session)
    session.install(*DOCS_DEPS)
    session.run("pytest", "tests/docs", *session.posargs)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff + mypy over the core and every package."""
    session.install("ruff", "mypy", "pandas-stubs", "pytest", "-e", f"{CORE}[postgres]")
    session.run("ruff", "check", "packages", "tests", "benchmarks", "examples", "tools", "noxfile.py")
    session.run("python", "tools/check_layers.py")  # no upward import, no import cycle in the core
    session.run(
        "mypy",
        "packages/datapipe-core/datapipe",
        "packages/datapipe-redis/datapipe_redis",
        "packages/datapipe-elastic/datapipe_elastic",
        "packages/datapipe-qdrant/datapipe_qdrant",
        "packages/datapipe-milvus/datapipe_milvus",
    )


@nox.session
def qdrant(session: nox.Session) -> None:
    """datapipe-qdrant on embedded Qdrant (":memory:" and a local path); a server too when QDRANT_URL is set."""
    install_core(session)
    session.install("-e", "./packages/datapipe-qdrant")
    session.run("pytest", "tests/qdrant", *session.posargs)


@nox.session
def milvus(session: nox.Session) -> None:
    """datapipe-milvus on embedded Milvus Lite (a temp file URI)."""
    install_core(session)
    session.install("-e", "./packages/datapipe-milvus")
    session.run("pytest", "tests/milvus", *session.posargs)


@nox.session
def cli(session: nox.Session) -> None:
    """The `datapipe` command line and the progress display (SQLite; psycopg for the unreachable-DB case)."""
    install_core(session, "postgres,otel")
    session.install("opentelemetry-sdk")
    session.run("pytest", "tests/cli", *session.posargs)


@nox.session
def ray(session: nox.Session) -> None:
    """RayExecutor on a local 2-CPU Ray: results and metadata equal the single-thread run."""
    install_core(session, "ray,postgres")
    session.run("pytest", "tests/ray", *session.posargs)


@nox.session
def redis(session: nox.Session) -> None:
    """datapipe-redis against a throwaway redis-server (or REDIS_URL), plain and one-node cluster."""
    install_core(session)
    session.install("-e", "./packages/datapipe-redis")
    session.run("pytest", "tests/redis", *session.posargs)


@nox.session
def elastic(session: nox.Session) -> None:
    """datapipe-elastic: pure unit tests always; store tests against ELASTICSEARCH_URL (skipped without it)."""
    install_core(session)
    session.install("-e", "./packages/datapipe-elastic")
    session.run("pytest", "tests/elastic", *session.posargs)


def venv_015(session: nox.Session) -> Path:
    """The interpreter of ``.nox/bench-015``: a virtualenv with datapipe-core 0.15.0 from the package index."""
    venv = Path(session.virtualenv.location).parent / "bench-015"
    python = venv / "bin" / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
    session.run(str(python), "-m", "pip", "install", "-q", "datapipe-core==0.15.0", "psycopg2-binary", external=True)
    return python


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, one table with targets (not a default session): `nox -s bench -- --sizes 100000 --db sqlite`;
    `-- --ray` adds the Ray phases, `-- --vs-015` datapipe 0.15 side by side (see benchmarks/README.md)."""
    install_core(session, "postgres,ray")
    session.install("matplotlib")
    args = list(session.posargs)
    if any(a.startswith("--vs-015") for a in args) and not any(a.startswith("--python015") for a in args):
        args += ["--python015", str(venv_015(session))]
    session.run("python", "benchmarks/run.py", *args)


@nox.session
def bench_015(session: nox.Session) -> None:
    """This Datapipe next to datapipe-core 0.15.0 on the same workload (not a default session)."""
    install_core(session, "postgres")
    python = venv_015(session)
    session.run("python", "benchmarks/vs_015.py", "--python015", str(python), *session.posargs)


@nox.session
def bench_ray(session: nox.Session) -> None:
    """Ray executor speed-up vs single-threaded on a local 2-CPU Ray (not a default session)."""
    install_core(session, "ray,postgres")
    session.run("python", "benchmarks/ray_speedup.py", *session.posargs)


@nox.session
def plugins(session: nox.Session) -> None:
    """Plugin discovery: core + the example and the broken third-party plugins, installed as distributions."""
    install_core(session)
    session.install("--force-reinstall", "--no-deps", "./tests/plugin_example", "./tests/plugin_broken")
    session.run("pytest", "tests/plugins", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """Crash (SIGKILL) loop, fault injection, bad input, outages, concurrent runners, security.

    SQLite and PostgreSQL metadata; Redis output. RELIABILITY_RECORDS / RELIABILITY_KILLS scale the crash loop.
    """
    install_core(session)
    session.install("redis", "-e", "./packages/datapipe-redis")
    session.run("pytest", "tests/reliability", "-p", "no:cacheprovider", "--timeout", "900", *session.posargs)


@nox.session
def ui(session: nox.Session) -> None:
    """`datapipe ui` (the web view): JSON API tests, and browser tests in headless Debian chromium
    (Playwright drives /usr/bin/chromium; no browser download). Screenshots go to tests/ui/artifacts/."""
    install_core(session, "ui,postgres,image")
    session.install("httpx", "playwright")
    session.run("pytest", "tests/ui", "--timeout", "300", *session.posargs)


@nox.session
def adopt(session: nox.Session) -> None:
    """`datapipe db adopt` against databases written by the real datapipe-core 0.15.0 (SQLite and PostgreSQL).

    0.15 gets a virtualenv of its own (``.nox/adopt-015``), driven only through its public API by
    ``tests/adopt/build_015.py``. ADOPT_RECORDS scales the deployment (default 1000 items).
    """
    install_core(session, "postgres")
    venv = Path(session.virtualenv.location).parent / "adopt-015"
    python = venv / "bin" / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
    session.run(str(python), "-m", "pip", "install", "-q", "datapipe-core==0.15.0", "psycopg2-binary", external=True)
    session.run("pytest", "tests/adopt", *session.posargs, env={"DATAPIPE_015_PYTHON": str(python)})

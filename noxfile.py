"""Test sessions. `nox` runs every default session; `nox -s bench` runs the benchmarks.

Each backend session installs only datapipe-core plus that backend into a fresh virtualenv,
which proves the backend works without the others.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "core"]

CORE = "./packages/datapipe-core"
TEST_DEPS = ["pytest>=8", "pytest-timeout"]


def install_core(session: nox.Session, extras: str = "postgres") -> None:
    session.install("-e", f"{CORE}[{extras}]" if extras else CORE, *TEST_DEPS)


@nox.session
def core(session: nox.Session) -> None:
    """Core engine tests on SQLite and PostgreSQL."""
    install_core(session, "postgres,image,parquet,excel")
    session.run("pytest", "tests/core", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff + mypy over the core and every package."""
    session.install("ruff", "mypy", "pandas-stubs", "-e", f"{CORE}[postgres]")
    session.run("ruff", "check", "packages", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("mypy", "packages/datapipe-core/datapipe")

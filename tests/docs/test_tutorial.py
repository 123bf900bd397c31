"""Every tutorial snippet runs, in order, as a reader would run it, and prints what the page shows."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SNIPPETS = ROOT / "docs" / "tutorial" / "snippets"
PAGE = ROOT / "docs" / "tutorial" / "index.md"
SCRIPTS = ["first_run", "rerun", "deletion", "failure"]


def included_files() -> list:
    return re.findall(r'--8<-- "docs/tutorial/snippets/([^"]+)"', PAGE.read_text())


def test_page_includes_every_snippet():
    names = included_files()
    on_disk = sorted(p.name for p in SNIPPETS.iterdir())
    assert sorted(set(names)) == on_disk  # nothing on disk that the page does not show, and vice versa


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("shop")
    shutil.copy(SNIPPETS / "shop.py", work)
    for name in SCRIPTS + ["fix"]:
        shutil.copy(SNIPPETS / f"{name}.py", work)
    return work


def run(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def datapipe() -> str:
    exe = Path(sys.executable).parent / "datapipe"
    return str(exe) if exe.exists() else "datapipe"


def test_tutorial_in_order(workdir: Path):
    # one test: each step depends on the state the previous one left, as in the tutorial
    for name in SCRIPTS:
        done = run([sys.executable, f"{name}.py"], workdir)
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout == (SNIPPETS / f"{name}.out").read_text(), name

    status = run([datapipe(), "--pipeline", "shop.py", "step", "list", "--status"], workdir)
    assert status.returncode == 0 and "negative amount in order(s) [14]" in status.stdout

    cli = run([datapipe(), "--pipeline", "shop.py", "run"], workdir)
    assert cli.returncode == 1
    shown = (SNIPPETS / "cli_failure.out").read_text()
    for line in shown.splitlines():
        if line.startswith(("Error:", "  keys:", "  ValueError", "  traceback", "        raise")):
            assert line in cli.stderr.splitlines(), line

    graph = run([datapipe(), "--pipeline", "shop.py", "graph"], workdir)
    assert graph.returncode == 0 and "s_order_totals --> t_totals" in graph.stdout

    fixed = run([sys.executable, "fix.py"], workdir)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout == (SNIPPETS / "fix.out").read_text()

"""The README's quickstart command works and is incremental."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "quickstart"


def run(cwd: Path) -> str:
    res = subprocess.run([sys.executable, "app.py"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()[0]


def test_quickstart_runs_incrementally(tmp_path):
    work = tmp_path / "quickstart"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    assert run(work) == "processed 10 changed product(s); 'priced' now holds 10 rows"
    assert run(work) == "processed 0 changed product(s); 'priced' now holds 10 rows"

    path = work / "data" / "products.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["price"] = 1.0
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:-1]))  # change one, drop one
    assert run(work) == "processed 2 changed product(s); 'priced' now holds 9 rows"

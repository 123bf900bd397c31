"""examples/vector_search runs, is incremental, and answers queries from embedded Qdrant."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "vector_search"


def run(cwd: Path, query: str) -> list:
    res = subprocess.run([sys.executable, "app.py", query], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def test_vector_search_example(tmp_path):
    work = tmp_path / "vector_search"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.db*", "qdrant_data", "__pycache__"))
    out = run(work, "how do I make coffee")
    assert out[0] == "embedding 8 document(s)"
    assert {line.split(":")[0] for line in out[1:3]} == {"d1", "d2"}

    assert run(work, "office chair")[0].startswith("d4:")  # nothing changed: nothing embedded

    path = work / "data" / "docs.jsonl"
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    docs[7]["text"] = "Matcha is whisked green tea powder, a cousin of coffee."
    path.write_text("".join(json.dumps(d) + "\n" for d in docs[1:]))  # edit d8, delete d1
    out = run(work, "how do I make coffee")
    assert out[0] == "embedding 1 document(s)"
    hits = [line.split(":")[0] for line in out[1:]]
    assert "d1" not in hits and "d2" in hits

"""bench/run_all.py runs every benchmark that writes a section of docs/benchmarks.md (none is forgotten)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_run_all_covers_every_benchmark_script():
    writers = {p.name for p in BENCH.glob("*.py") if "write_section(" in p.read_text() and p.name != "_report.py"}
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--dry-run"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    run = set(re.findall(r"python bench/(\w+\.py)", out.stdout))
    by_hand = set(re.findall(r"not run here: bench/(\w+\.py)", out.stdout))
    assert writers and writers <= run | by_hand, sorted(writers - run - by_hand)
    assert not run & by_hand


def test_run_all_refuses_unknown_names():
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "nope", "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown benchmark nope" in out.stderr

"""The shipped systemd units start commands this edgerec knows (every option parses)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def _exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", ["edgerec-node.service", "edgerec-sync.service"])
def test_exec_start_parses(unit):
    argv = _exec_start(UNITS / unit)
    assert argv[0] == "/opt/edgerec/bin/edgerec"
    # --help after every option: click rejects an unknown option before it prints help.
    out = subprocess.run([sys.executable, "-m", "edgerec.sdk.cli", *argv[1:], "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if unit == "edgerec-node.service":
        assert "--serve" in argv and "--state-dir" in argv and "--model-dir" in argv

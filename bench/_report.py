"""Writing one area's section of docs/benchmarks.md, with the machine and the command."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def command() -> str:
    """This process's command line, as run from the project root."""
    return "python " + " ".join([Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]])


def header(title: str, run: dict[str, str] | None = None) -> str:
    """The section's title line, then machine, date and command (of ``run``, a saved run, when given)."""
    run = run or {"machine": machine(), "date": f"{datetime.now(UTC):%Y-%m-%d}", "command": command()}
    return f"## {title}\n\nMachine: {run['machine']}. Date: {run['date']}. Command: `{run['command']}`.\n\n"


def write_section(area: str, body: str) -> None:
    """Replace the text between this area's markers, leaving other sections alone."""
    begin, end = f"<!-- BEGIN {area} -->", f"<!-- END {area} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = DOC.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)

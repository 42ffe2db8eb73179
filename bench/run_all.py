"""Every benchmark, one after the other, each rewriting its section of docs/benchmarks.md.

    python bench/run_all.py              # all of them (about an hour on 2 cores)
    python bench/run_all.py --only sync,metrics
    python bench/run_all.py --dry-run    # the commands, without running them

Each script writes its own section with the machine, the command and the date
(bench/_report.py), so a partial run leaves the other sections as they were.
The GPU scripts need a machine with a GPU and run in two steps (build here,
check there): they are listed, not run. Runs one at a time on purpose: the
numbers are medians of side-by-side rounds within a script, and two scripts at
once would measure each other. Exits non-zero if any script failed, after
running the rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, arguments): in the order a reader meets them in docs/benchmarks.md.
RUNS: list[tuple[str, list[str]]] = [
    ("sdk", ["sdk.py"]),
    ("converter", ["converter.py"]),
    ("edge_server", ["edge_server.py"]),
    ("edge_server_instructions", ["edge_server_instructions.py"]),
    ("sync", ["sync.py", "--store", "both"]),
    ("sync_capacity", ["sync.py", "--capacity", "--store", "both"]),
    # about 5 minutes: the sustained rate searched in 5 s rounds, then two 20 s steps at twice it
    ("sync_overload", ["sync.py", "--overload", "--store", "sqlite", "--rounds", "1", "--step", "5",
                       "--overload-step", "20"]),
    ("sync_scale", ["sync.py", "--scale", "--replicas", "2", "--nodes", "500", "--start", "25", "--rounds", "3",
                    "--step", "6", "--precision", "0.1"]),
    ("metrics", ["metrics.py", "--store", "both"]),
    ("node", ["node.py"]),
]
# Scripts that need a GPU machine (the device tool), two steps each; see their docstrings.
BY_HAND = {"sdk_gpu.py": "build here, check on a GPU machine, then bench/sdk.py --gpu-json",
           "edge_server_gpu.py": "build here, check on a GPU machine, then report"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated names: " + ", ".join(n for n, _ in RUNS))
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args()
    names = [n for n, _ in RUNS]
    wanted = args.only.split(",") if args.only else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(names)})")
    results: list[tuple[str, int, float]] = []
    for name, argv in RUNS:
        if name not in wanted:
            continue
        cmd = [sys.executable, str(HERE / argv[0]), *argv[1:]]
        print(f"== {name}: python bench/{' '.join(argv)}", flush=True)
        if args.dry_run:
            continue
        started = time.monotonic()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        results.append((name, rc, time.monotonic() - started))
    for script, how in BY_HAND.items():
        print(f"-- not run here: bench/{script} ({how})")
    if results:
        print("\nbenchmark        exit   minutes")
        for name, rc, seconds in results:
            print(f"{name:<16} {rc:>4}   {seconds / 60:7.1f}")
    sys.exit(1 if any(rc for _, rc, _ in results) else 0)


if __name__ == "__main__":
    main()

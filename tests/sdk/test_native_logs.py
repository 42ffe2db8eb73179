"""``edgerec.sdk.native_logs``: native writes to fd 2 hidden, nothing Python prints lost.

Each case runs in a fresh interpreter: the switches are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, os, sys, threading
    from edgerec.sdk import native_logs

    atexit.register(lambda: os.write(2, b"native at exit\\n"))  # runs after quiet()'s own exit hook
    if sys.argv[1] == "quiet":
        native_logs.quiet()
    os.write(2, b"native before\\n")
    with native_logs.silenced():
        os.write(2, b"native inside\\n")
        t = threading.Thread(target=lambda: print("python from a thread", file=sys.stderr, flush=True))
        t.start()
        t.join()
        with native_logs.silenced():
            os.write(2, b"native nested\\n")
        os.write(2, b"native after nested\\n")
    os.write(2, b"native after\\n")
    print("stdout stays", flush=True)
""")


def run(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("EDGEREC_LOG_NATIVE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60,
                          env={**full, **env})


def test_quiet_process_hides_native_writes_inside_blocks_and_at_exit():
    proc = run("quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stdout stays\n"
    assert proc.stderr.splitlines() == ["native before", "python from a thread", "native after"]


def test_the_switch_shows_everything():
    proc = run("quiet", EDGEREC_LOG_NATIVE="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "native before", "native inside", "python from a thread", "native nested", "native after nested",
        "native after", "native at exit",
    ]


def test_a_process_that_did_not_ask_keeps_its_fd_2():
    # An application embedding the SDK: silenced() leaves stderr alone.
    proc = run("library")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.splitlines()) == 7


def test_quiet_sets_tensorflow_switches_unless_shown():
    code = ("import os; from edgerec.sdk import native_logs; native_logs.quiet(); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL')); native_logs.show(); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ['EDGEREC_LOG_NATIVE'])")
    full = {k: v for k, v in os.environ.items() if k not in ("EDGEREC_LOG_NATIVE", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full)
    assert proc.stdout.splitlines() == ["3", "None 1"], proc.stderr

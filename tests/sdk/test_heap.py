"""Long-lived objects kept out of full collections, and a frozen cycle still freed when asked (each case in a
fresh interpreter: freezing pytest's own objects would change every later test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SETUP = """
import gc, weakref
from edgerec.sdk.heap import collect_all, freeze_long_lived

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)
"""


def _run(body: str) -> str:
    code = textwrap.dedent(SETUP) + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_what_is_alive_at_the_freeze_is_out_of_full_collections():
    out = _run("""
        held, alive = cycle()
        garbage = cycle()[1]  # unreachable before the freeze: collected by it, not kept for good
        freeze_long_lived()
        frozen = gc.get_freeze_count()
        held = None  # now garbage, but frozen: a full collection does not look at it
        gc.collect()
        print(frozen > 1000, garbage() is None, alive() is not None)
    """)
    assert out == "True True True"


def test_collect_all_frees_a_frozen_cycle_and_keeps_the_rest_frozen():
    out = _run("""
        held, alive = cycle()
        freeze_long_lived()
        before = gc.get_freeze_count()
        held = None
        collect_all()  # what the edge server runs after a model version is released
        print(alive() is None, gc.get_freeze_count() > before // 2)  # the live rest frozen again
    """)
    assert out == "True True"


def test_collect_all_does_not_freeze_a_process_that_never_froze():
    out = _run("""
        held, alive = cycle()
        held = None
        collect_all()
        print(alive() is None, gc.get_freeze_count())
    """)
    assert out == "True 0"


def test_freezes_counts_each_freeze():
    """What the edge server compares a model version's birth against, to know if its objects are frozen."""
    out = _run("""
        from edgerec.sdk.heap import freezes
        counts = [freezes()]
        freeze_long_lived()
        counts.append(freezes())
        freeze_long_lived()
        counts.append(freezes())
        print(counts)
    """)
    assert out == "[0, 1, 2]"

"""A server worker's heap and Python's cyclic garbage collector.

A worker keeps nearly every object it made while starting (modules, routes,
the Flask and SQLAlchemy machinery, its loaded models: 65,000 objects in an
edge-server worker) until it exits, and a full collection scans them all,
with every request of the worker waiting on the GIL meanwhile. Under load that
was one pause of 25-60 ms every 5-10 s (measured; docs/benchmarks.md), which
set the 99th percentile. :func:`freeze_long_lived` moves them out of the
collector's reach (``gc.freeze``); objects made later are collected as before.
"""

from __future__ import annotations

import gc

# One entry per freeze_long_lived call (a list, so counting needs no global statement).
_freezes: list[None] = []


def freeze_long_lived() -> None:
    """Collect, then keep every object alive now out of later collections (in a worker, once it has loaded).

    Collected first so that no garbage cycle is kept for good. Calling it
    again freezes what has been made since.
    """
    gc.collect()
    gc.freeze()
    _freezes.append(None)


def freezes() -> int:
    """How many times this process froze its heap: an object made before the latest freeze is frozen."""
    return len(_freezes)


def collect_all() -> None:
    """A full collection that reaches frozen objects too (after a model is dropped), which stay frozen after.

    A cycle among frozen objects would otherwise never be freed: a released
    model version's would stay for good.
    """
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()


__all__ = ["collect_all", "freeze_long_lived", "freezes"]

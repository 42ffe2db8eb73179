"""Releasing a retired version: a full, unfreezing collection only for a version the worker froze.

A full collection that unfreezes scans the whole worker heap with the GIL held (25-60 ms): run after every
swap, it set the p99 during swaps (bench/edge_server.py: 47-50 ms against 29-34 ms without it).
"""

from __future__ import annotations

import gc
import weakref

import pytest

from edgerec.edge_server import repository as repo_mod
from edgerec.edge_server.metrics import Metrics
from edgerec.edge_server.repository import LoadSettings, Repository
from edgerec.sdk import heap
from edgerec.sdk.keys import load_public_key


@pytest.fixture
def recorded(monkeypatch):
    """Heap freezes as the test sets them, and each release_memory call's ``frozen`` (then a plain collection,
    so a version nothing refers to any more is gone)."""
    state = {"freezes": [], "calls": []}
    monkeypatch.setattr(heap, "_freezes", state["freezes"])  # the count freeze_long_lived keeps, without freezing
    monkeypatch.setattr(repo_mod, "release_memory", lambda frozen=True: (state["calls"].append(frozen), gc.collect()))
    return state


def test_only_a_version_made_before_the_latest_freeze_gets_the_full_collection(recorded, packages, trusted_key):
    repo = Repository(LoadSettings(trusted_keys=(load_public_key(trusted_key),)), Metrics())
    first = weakref.ref(repo.load(packages["v1"]).model)
    recorded["freezes"].append(None)  # the worker froze its heap with v1 loaded
    repo.load(packages["v2"])  # v1 retires: its objects are frozen
    assert repo.wait_released()
    assert recorded["calls"] == [True] and first() is None
    second = weakref.ref(repo.get("ctr").model)
    repo.load(packages["v3"])  # v2 retires: made after the freeze, a plain collection reaches it
    assert repo.wait_released()
    assert recorded["calls"] == [True, False] and second() is None
    repo.close()

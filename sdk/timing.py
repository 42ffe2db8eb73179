"""Timing a call the same way wherever edgerec measures latency."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_ms(call: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Wall time of each of ``repeats`` calls in milliseconds, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return times

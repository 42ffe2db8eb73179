"""Prometheus metrics of one server: traffic, batching, models, cache, events, errors.

Each app has its own registry (tests build several apps in one process). Label
children are cached per label tuple, because ``labels()`` takes a lock and
formats strings on every call and this sits on the per-request path. Label
values come only from loaded models and fixed vocabularies, never from what a
client typed, so a client cannot blow up the series count.

With several worker processes ``edgerec serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
and ``/metrics`` sums every worker's values (prometheus_client's multiprocess
mode). Counters of a worker that died keep counting in the sum; its
``liveall`` gauges (``edgerec_model_info``) are dropped once it is gone, by
whichever worker renders ``/metrics`` next.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EVENT_TYPES = ("impression", "click", "conversion")


class Metrics:
    """The server's collectors and cheap recording helpers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        model_v = ("model", "version")
        self.requests = Counter("edgerec_requests", "HTTP requests handled.",
                                ("endpoint", "model", "version", "variant", "code"), registry=r)
        self.latency = Histogram("edgerec_request_duration_seconds", "Time to answer a request.",
                                 ("endpoint", "model", "version", "variant"), buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.batch_rows = Histogram("edgerec_batch_size_rows", "Rows per runtime call.", model_v,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("edgerec_batch_size_requests", "Requests merged per runtime call.",
                                        model_v, buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("edgerec_batch_queue_wait_seconds",
                                    "Time a request waited for its batch.", model_v,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("edgerec_model_info",
                                "Loaded model versions and the accelerator each runs on (value 1).",
                                ("model", "version", "backend", "accelerator", "fully_delegated", "serving"),
                                multiprocess_mode="liveall", registry=r)
        self.loads = Counter("edgerec_model_loads", "Model version loads by outcome.", ("model", "outcome"),
                             registry=r)
        self.load_failures = Counter("edgerec_model_load_failures",
                                     "Refused model versions by stage (verify, load, warmup).",
                                     ("model", "stage"), registry=r)
        self.swaps = Counter("edgerec_model_swaps", "Serving version changes.", ("model",), registry=r)
        self.unloads = Counter("edgerec_model_unloads", "Model versions released.", ("model",), registry=r)
        self.cache_hits = Counter("edgerec_feature_cache_hits", "Feature lookups served by the cache.",
                                  ("kind", "cache"), registry=r)
        self.cache_misses = Counter("edgerec_feature_cache_misses",
                                    "Feature lookups that went to the source.", ("kind", "cache"), registry=r)
        self.events = Counter("edgerec_events", "Business events by the variant that served them.",
                              ("model", "version", "experiment", "variant", "type"), registry=r)
        self.spool_dropped = Counter("edgerec_events_spool_dropped",
                                     "Spool lines (events, operational figures) dropped: the spool was full.",
                                     registry=r)
        self.errors = Counter("edgerec_errors", "Error responses by kind.", ("endpoint", "kind"), registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._info: dict[tuple[str, str], tuple[str, ...]] = {}
        self._requests: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    # -- recording ---------------------------------------------------------------

    def request(self, endpoint: str, model: str, version: str, variant: str, code: int, seconds: float) -> None:
        key = (endpoint, model, version, variant, code)
        pair = self._requests.get(key)
        if pair is None:
            pair = self._requests.setdefault(key, (
                self.requests.labels(endpoint, model, version, variant, str(code)),
                self.latency.labels(endpoint, model, version, variant)))
        pair[0].inc()
        pair[1].observe(seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int, int, Sequence[float]], None]:
        """A recorder of one version's runtime calls (label children resolved once, not per call)."""
        rows_h = self.batch_rows.labels(model, version)
        requests_h = self.batch_requests.labels(model, version)
        wait_h = self.queue_wait.labels(model, version)

        def observe(rows: int, requests: int, waits: Sequence[float]) -> None:
            rows_h.observe(rows)
            requests_h.observe(requests)
            for w in waits:
                wait_h.observe(w)

        return observe

    def model_up(self, model: str, version: str, backend: str, accelerator: str,
                 fully_delegated: bool | None, serving: bool) -> None:
        """Mark a version loaded (again, when it starts or stops serving)."""
        self.model_down(model, version)
        labels = (model, version, backend, accelerator, str(fully_delegated).lower(), str(serving).lower())
        self.model_info.labels(*labels).set(1)
        self._info[(model, version)] = labels

    def model_down(self, model: str, version: str) -> None:
        labels = self._info.pop((model, version), None)
        if labels is not None:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # Its value lives in this worker's file, where remove() cannot reach: zero it.
                self.model_info.labels(*labels).set(0)
            else:
                self.model_info.remove(*labels)

    def load(self, model: str, ok: bool, stage: str | None = None) -> None:
        self._child(self.loads, model, "ok" if ok else "failed").inc()
        if not ok:
            self._child(self.load_failures, model, stage or "load").inc()

    def swap(self, model: str) -> None:
        self._child(self.swaps, model).inc()

    def unload(self, model: str) -> None:
        self._child(self.unloads, model).inc()

    def cache(self, kind: str, cache: str, hits: int, misses: int) -> None:
        if hits:
            self._child(self.cache_hits, kind, cache).inc(hits)
        if misses:
            self._child(self.cache_misses, kind, cache).inc(misses)

    def event(self, model: str, version: str, experiment: str, variant: str, kind: str, n: int = 1) -> None:
        self._child(self.events, model, version, experiment, variant, kind).inc(n)

    def error(self, endpoint: str, kind: str) -> None:
        self._child(self.errors, endpoint, kind).inc()

    # -- exposition --------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition format; all workers' values in multiprocess mode."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            from prometheus_client import multiprocess

            forget_dead_workers(folder)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of worker processes that no longer run (granian replaces them; nobody tells us)."""
    from prometheus_client import multiprocess

    pids = set()
    for path in Path(folder).glob("gauge_live*_*.db"):
        with contextlib.suppress(ValueError):
            pids.add(int(path.stem.rsplit("_", 1)[1]))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:
            continue


__all__ = ["EVENT_TYPES", "Metrics", "forget_dead_workers"]

"""Adaptive micro-batching: concurrent requests for one model version run as one call.

Modelled on MLServer's adaptive batcher, with these rules:

- one waiter per request; the batch flushes when it holds ``max_batch`` rows,
  when its oldest request has waited ``max_delay`` (monotonic clock), or as
  soon as no other request is on its way to this model (``arriving == 0``), so
  a lone client never waits for a deadline;
- "on its way" includes requests the HTTP front has read and that wait for an
  app thread (:func:`edgerec.sdk.wsgi_front.backlog`): with a few app threads,
  a request only reaches :meth:`Batcher.arrive` once it has one, so counting
  only those would flush batches of one or two while the rest queue;
- a request that fills a batch alone, or arrives while the model is idle and
  nobody else is coming, runs at once in its own thread (no hand-off); with
  batching off every request is a direct call, without the batcher's lock;
- a model whose call takes less than ``min_merge_call_s`` of CPU (the least
  of its last few calls, direct or merged, and of the calls :meth:`Batcher.calibrate`
  timed when the version was loaded; one found light then is served as with
  batching off, without the batcher's lock) is not merged at all: waiting for a batch
  costs a few thread hand-offs per request (60-130 us of CPU measured on the
  light bench model, whose call takes 11 us), more than merging saves;
- only requests whose arrays agree in dtype and trailing shape are merged;
- a failed merged batch is retried request by request, so every waiter gets
  its own result or its own error and one bad request does not fail its
  neighbours; a batch that fails as a whole fails every waiter in it;
- if the batcher itself crashes, everything pending fails and it carries on.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic, thread_time
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.wsgi_front import backlog, parked

from .errors import UnavailableError

Arrays = dict[str, npt.NDArray[Any]]
RunFn = Callable[[Arrays], Arrays]
# rows in the runtime call, requests merged, seconds each request queued
Observer = Callable[[int, int, Sequence[float]], None]

log = logging.getLogger("edgerec.edge_server.batching")
_NO_WAIT = (0.0,)
_CALLS_KEPT = 16  # calls the cost estimate looks back on
_CALIBRATION_CALLS = 5
_CALIBRATION_BUDGET_S = 0.05  # a heavy model is known by its first call; don't spend a second on it


class BatcherCrashedError(UnavailableError):
    """The batcher failed outside the model call; the request may be retried."""


class _Waiter:
    """One request's place in the queue; a held lock is the cheapest one-shot event."""

    __slots__ = ("_done", "arrays", "enqueued", "error", "key", "result", "rows")

    def __init__(self, arrays: Arrays, rows: int, key: tuple[Any, ...], now: float) -> None:
        self.arrays, self.rows, self.key, self.enqueued = arrays, rows, key, now
        self.result: Arrays | None = None
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def resolve(self, result: Arrays) -> None:
        self.result = result
        self._done.release()

    def reject(self, error: BaseException) -> None:
        self.error = error
        self._done.release()

    def wait(self, timeout: float) -> Arrays:
        if not self._done.acquire(timeout=timeout):
            raise UnavailableError(f"no result within {timeout:g} s (server overloaded)")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _none_waiting() -> int:
    return 0


def _key(arrays: Arrays) -> tuple[Any, ...]:
    # Strings of different widths stack fine; numbers only with the same dtype.
    return tuple((k, v.dtype.kind if v.dtype.kind in "US" else v.dtype.str, v.shape[1:]) for k, v in arrays.items())


class Batcher:
    """Merges concurrent ``submit`` calls for one model into fewer runtime calls.

    Callers announce themselves with :meth:`arrive` as soon as they know the
    model (before parsing their body) and then either :meth:`submit` once or
    :meth:`depart`; that count is what lets a batch flush early.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int,
        max_delay_s: float,
        timeout_s: float = 30.0,
        observe: Observer | None = None,
        name: str = "model",
        min_merge_call_s: float = 0.0,
    ) -> None:
        self._run = run
        self._min_call = min_merge_call_s
        # What a model call costs: the least CPU time of its last few calls, direct or merged (the call
        # alone, not the hand-offs around a merged one); unknown (infinite) until the first. The least,
        # not an average: under load a light model's calls cost 5-40x their quiet median now and then
        # (the GIL's hand-offs and the caches count as the call's CPU), and an average lifted over the
        # line merged every request after it. Merged calls count, or nothing would lower it under load.
        self._recent: deque[float] = deque(maxlen=_CALLS_KEPT)
        self._floor = math.inf  # the least a one-request call cost when it was timed alone (calibrate)
        self._call_s = math.inf
        self._max_batch = max(1, max_batch)
        self._max_delay = max(0.0, max_delay_s)
        self._enabled = self._max_batch > 1 and self._max_delay > 0
        self._timeout = timeout_s
        self._observe = observe
        self._name = name
        # The request side takes the lock itself (a Condition's ``with`` adds two Python-level calls);
        # holding it is holding the condition, so notify() works under it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Waiter] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._busy = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        # Requests read by the HTTP front and waiting for an app thread (set by the first submit from one).
        self._backlog: Callable[[], int] = _none_waiting

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def call_s(self) -> float:
        """The model call's cost as the batcher judges it (CPU seconds; infinite before any call)."""
        return self._call_s

    def calibrate(self, arrays: Arrays) -> float:
        """Time a few calls on one request's ``arrays`` before serving; returns the least CPU seconds.

        The result bounds the estimate from below for the batcher's lifetime: a model version's cost does
        not change, but its calls under load look 5-40x dearer (the GIL's hand-offs and cold caches count
        as their CPU), and merged calls are dearer still, so an estimate made only under load can hold a
        light model above the line and merge it for as long as the load lasts. A model found light here
        is then served as with batching off (no lock, no arrival count, no timing): call this before the
        batcher serves.
        """
        spent = 0.0
        for _ in range(_CALIBRATION_CALLS):
            started, cpu = monotonic(), thread_time()
            self._run(arrays)
            took = thread_time() - cpu
            spent += monotonic() - started
            self._floor = min(self._floor, took)
            if spent > _CALIBRATION_BUDGET_S:
                break
        with self._lock:
            self._call_s = min(self._floor, self._call_s)
            if self._call_s < self._min_call:
                self._enabled = False  # for good: the floor only ever lowers the estimate
        return self._floor

    # -- request side ----------------------------------------------------------

    def arrive(self) -> None:
        if self._enabled:  # only batching needs the count
            with self._lock:
                self._arriving += 1

    def depart(self) -> None:
        """For a request that arrived but will not submit (bad input, an error)."""
        if self._enabled:
            with self._lock:
                self._arriving -= 1
                if self._arriving == 0 and self._queue:
                    self._cond.notify()

    def submit(self, arrays: Arrays, rows: int) -> Arrays:
        """Score ``rows`` rows (after :meth:`arrive`); returns this request's slice."""
        if not self._enabled:  # a direct call
            if self._closed:
                raise UnavailableError(f"{self._name} is being unloaded; retry")
            out = self._run(arrays)
            if self._observe is not None:
                self._observe(rows, 1, _NO_WAIT)
            return out
        if self._backlog is _none_waiting:
            self._backlog = backlog() or _none_waiting
        mine = 0 if self._backlog is _none_waiting else 1  # this request's own slot
        with self._lock:
            self._arriving -= 1
            if self._closed:
                raise UnavailableError(f"{self._name} is being unloaded; retry")
            inline = (
                not self._enabled
                or rows >= self._max_batch
                or self._call_s < self._min_call
                or (not self._queue and self._arriving == 0 and self._busy == 0 and self._backlog() <= mine)
            )
            if inline:
                self._busy += 1
            else:
                waiter = _Waiter(arrays, rows, _key(arrays), monotonic())
                self._queue.append(waiter)
                self._queued_rows += rows
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"batcher-{self._name}",
                                                    daemon=True)
                    self._thread.start()
                if len(self._queue) == 1 or self._arriving == 0 or self._queued_rows >= self._max_batch:
                    self._cond.notify()
        if not inline:
            with parked():  # the front runs another request meanwhile, which may join this batch
                return waiter.wait(self._timeout)
        started = thread_time()  # CPU time: a wall clock would count waits for the GIL under load
        try:
            out = self._run(arrays)
        finally:
            took = thread_time() - started
            with self._lock:
                self._busy -= 1
                self._measured(took)
        if self._observe is not None:
            self._observe(rows, 1, _NO_WAIT)
        return out

    def _measured(self, took: float) -> None:
        """One model call's CPU seconds (lock held)."""
        self._recent.append(took)
        self._call_s = min(self._floor, *self._recent)

    # -- batcher thread --------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch: list[_Waiter] = []
            try:
                taken = self._next_batch()
                if taken is None:
                    return
                batch = taken
                self._run_batch(batch)
            except Exception as exc:  # a bug here must not strand any waiter
                log.exception("batcher %s crashed; failing every pending request", self._name)
                self._fail_pending(batch, BatcherCrashedError(f"batcher crashed: {exc}"))
            finally:
                if batch:
                    with self._cond:
                        self._busy -= 1

    def _next_batch(self) -> list[_Waiter] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self._max_delay
            while (self._queued_rows < self._max_batch and (self._arriving > 0 or self._backlog() > 0)
                   and not self._closed):
                left = deadline - monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._take()
            self._busy += 1
            return batch

    def _take(self) -> list[_Waiter]:
        """The oldest request and every later compatible one that fits; others keep their place."""
        first = self._queue.popleft()
        batch, rows, kept = [first], first.rows, deque[_Waiter]()
        while self._queue:
            w = self._queue.popleft()
            if w.key == first.key and rows + w.rows <= self._max_batch:
                batch.append(w)
                rows += w.rows
            else:
                kept.append(w)
        self._queue = kept
        self._queued_rows -= rows
        return batch

    def _run_batch(self, batch: list[_Waiter]) -> None:
        started = monotonic()
        waits = [started - w.enqueued for w in batch]
        rows = sum(w.rows for w in batch)
        took = 0.0
        if len(batch) == 1:
            took = self._run_one(batch[0])
        else:
            try:
                merged = {k: np.concatenate([w.arrays[k] for w in batch]) for k in batch[0].arrays}
                cpu = thread_time()
                out = self._run(merged)
                took = thread_time() - cpu
                if any(v.ndim == 0 or v.shape[0] != rows for v in out.values()):
                    raise ValueError("an output is not batch-major; cannot split it")
            except Exception:
                # Isolate: each request runs alone so only a bad one gets an error.
                log.debug("batch of %d failed; running its requests one by one", len(batch))
                for w in batch:
                    self._run_one(w)
            else:
                start = 0
                for w in batch:
                    end = start + w.rows
                    w.resolve({k: v[start:end] for k, v in out.items()})
                    start = end
        if took:
            with self._lock:
                self._measured(took)
        if self._observe is not None:
            self._observe(rows, len(batch), waits)

    def _run_one(self, w: _Waiter) -> float:
        """Run one request's call and settle it; the call's CPU seconds (0 if it failed)."""
        cpu = thread_time()
        try:
            out = self._run(w.arrays)
        except Exception as exc:
            w.reject(exc)
            return 0.0
        took = thread_time() - cpu
        w.resolve(out)
        return took

    def _fail_pending(self, batch: list[_Waiter], error: BaseException) -> None:
        with self._cond:
            pending = [*batch, *self._queue]
            self._queue.clear()
            self._queued_rows = 0
        for w in pending:
            if w._done.locked() and w.result is None and w.error is None:
                w.reject(error)

    # -- lifetime --------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread once the queue is empty; anything left fails as unavailable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._fail_pending([], UnavailableError(f"{self._name} was unloaded; retry"))


__all__ = ["Arrays", "Batcher", "BatcherCrashedError", "Observer"]

"""Scoring held-out rows with every variant and measuring what conversion cost.

Variants run on the SDK's own runtime backends (the code a device runs), on
inputs encoded by the SDK's ``InputEncoder`` with the package's vocabularies,
so the report measures what will be deployed.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.manifest import Artifact, Format
from edgerec.sdk.runtime import Session, backend_for_format
from edgerec.sdk.timing import time_ms

Arrays = dict[str, npt.NDArray[Any]]
F64 = npt.NDArray[np.float64]


def auc(labels: F64, scores: F64) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over runs of equal scores.
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: F64, scores: F64, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(labels: F64, scores: F64, bins: int = 10) -> float:
    """ECE: the row-weighted mean gap between predicted and observed click rate over ``bins``
    equal-width score bins (Guo et al. 2017; Naeini et al. 2015)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))
    return float(gap.sum() / max(len(y), 1)) if count.any() else 0.0


@dataclass(frozen=True)
class Slices:
    """Held-out rows grouped by one column (``--slice-by``), for the per-slice accuracy check."""

    column: str
    rows: dict[str, npt.NDArray[np.int64]]  # slice name -> row indices (slices that can be scored)
    skipped: dict[str, str]  # slice name -> why it is not scored (too few rows, one class)
    source_auc: dict[str, float]

    def aucs(self, labels: F64, scores: F64) -> dict[str, float]:
        return {name: auc(labels[idx], scores[idx]) for name, idx in self.rows.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "slices": {n: {"rows": len(i), "source_auc": round(self.source_auc[n], 6)} for n, i in self.rows.items()},
            "skipped": dict(self.skipped),
        }


def score_column(outputs: Arrays, name: str) -> F64:
    out = np.asarray(outputs[name], dtype=np.float64)
    return out.reshape(out.shape[0], -1)[:, 0]


@dataclass
class VariantResult:
    """One produced artifact, measured."""

    name: str
    format: Format
    precision: str
    size: int
    compressed_size: int
    auc: float | None = None
    log_loss: float | None = None
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    auc_drop: float | None = None
    ece: float | None = None
    nodes: int | None = None  # ORT artifacts: nodes in the ORT file
    log_loss_increase: float | None = None
    ece_increase: float | None = None
    worst_slice: str | None = None  # the --slice-by slice that lost the most AUC
    worst_slice_auc_drop: float | None = None
    slice_auc: dict[str, float] | None = None
    status: str = "kept"  # kept | rejected | dropped (a smaller one is within budget)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: _rounded(v) for k, v in self.__dict__.items()}


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


def open_session(data: bytes, fmt: Format, precision: str, batch: int | None = None) -> Session:
    """A single-threaded CPU session on the SDK backend for ``fmt``."""
    art = Artifact(path=f"eval.{fmt}", format=fmt, sha256="0" * 64, size=len(data), precision=precision,
                   batch=batch if batch else "dynamic")
    return backend_for_format(fmt)().load(data, art, "cpu", 1)


def run_session(
    session: Session, encoded: Arrays, chunk: int = 2048, advance: Callable[[int], None] | None = None
) -> Arrays:
    n = next(iter(encoded.values())).shape[0]
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    for start in range(0, n, chunk):
        out = session.run({k: v[start : start + chunk] for k, v in encoded.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
        if advance is not None:
            advance(min(chunk, n - start))
    return {k: np.concatenate(v) for k, v in parts.items()}


def latency_ms(session: Session, encoded: Arrays, repeats: int = 50) -> float:
    """Median single-row latency, one thread, after warm-up runs."""
    row = {k: np.ascontiguousarray(v[:1]) for k, v in encoded.items()}
    return float(statistics.median(time_ms(lambda: session.run(row), repeats, warmup=5)))


def compressed_size(data: bytes) -> int:
    """Size inside the package zip (deflate), which is what a device downloads."""
    return len(zlib.compress(data, 6))


def measure(
    result: VariantResult,
    data: bytes,
    encoded: Arrays,
    output: str,
    labels: F64 | None,
    reference: F64 | None,
    advance: Callable[[int], None] | None = None,
    slices: Slices | None = None,
) -> F64:
    """Fill ``result`` with accuracy, calibration and latency on ``encoded`` rows; returns the scores."""
    session = open_session(data, result.format, result.precision)
    try:
        scores = score_column(run_session(session, encoded, advance=advance), output)
        result.latency_ms = latency_ms(session, encoded)
    finally:
        session.close()
    if labels is not None:
        result.auc = auc(labels, scores)
        result.log_loss = log_loss(labels, scores)
        result.ece = expected_calibration_error(labels, scores)
        if slices is not None:
            result.slice_auc = slices.aucs(labels, scores)
    if reference is not None:
        result.max_abs_diff = float(np.max(np.abs(scores - reference)))
    return scores

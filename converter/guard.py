"""The accuracy guard: what a variant may lose against the source model.

AUC measures ranking only; a quantization can keep it and still shift every
score (log loss and calibration get worse), or keep the average and hurt a
small group (cold users, rare items). So a variant is refused when any of
these exceeds its budget, each measured on the held-out rows against the
source model's own figure:

- AUC drop (``--max-auc-drop``);
- log loss increase (``--max-log-loss-increase``);
- expected calibration error increase (``--max-ece-increase``);
- with ``--slice-by COLUMN``: the AUC drop of the worst slice of that column
  (``--max-slice-auc-drop``, default: the AUC budget).

Slices: each value of the column when it has at most ``MAX_SLICES`` values;
otherwise equal-count quantile bins for numbers, and the most frequent values
(the rest pooled) for strings. A slice needs ``min_rows`` rows and both
labels to be scored; the others are reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import DataError
from .evaluate import F64, Slices, VariantResult, auc

MAX_SLICES = 16
QUANTILE_BINS = 5
MIN_SLICE_ROWS = 200


@dataclass(frozen=True)
class Budget:
    """What a variant may lose; ``None`` switches a check off."""

    max_auc_drop: float
    max_log_loss_increase: float | None = None
    max_ece_increase: float | None = None
    max_slice_auc_drop: float | None = None  # None: max_auc_drop

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_slices(
    values: npt.NDArray[Any], labels: F64, reference: F64, column: str, min_rows: int = MIN_SLICE_ROWS
) -> Slices:
    """Group held-out rows by ``values`` (one per row) and score the source on each group."""
    v = np.asarray(values)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1 or len(v) != len(labels):
        raise DataError(f"--slice-by {column!r}: expected one value per row, got shape {list(v.shape)}")
    groups = _groups(v)
    rows: dict[str, npt.NDArray[np.int64]] = {}
    skipped: dict[str, str] = {}
    for name, idx in groups.items():
        y = labels[idx]
        if len(idx) < min_rows:
            skipped[name] = f"{len(idx)} rows < {min_rows}"
        elif y.min() == y.max():
            skipped[name] = "one class only"
        else:
            rows[name] = idx
    if not rows:
        raise DataError(
            f"--slice-by {column!r}: no slice has {min_rows} rows with both labels "
            f"({len(groups)} slices: {', '.join(list(groups)[:6])})"
        )
    return Slices(column, rows, skipped, {n: auc(labels[i], reference[i]) for n, i in rows.items()})


def _groups(v: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.int64]]:
    uniq, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    if len(uniq) <= MAX_SLICES:
        return {str(u): np.flatnonzero(inverse == i) for i, u in enumerate(uniq)}
    if v.dtype.kind in "iuf":
        edges = np.unique(np.quantile(v.astype(np.float64), np.linspace(0, 1, QUANTILE_BINS + 1)))
        which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
        out = {}
        for b in range(len(edges) - 1):
            idx = np.flatnonzero(which == b)
            if len(idx):
                close = "]" if b == len(edges) - 2 else ")"
                out[f"[{_num(edges[b])}, {_num(edges[b + 1])}{close}"] = idx
        return out
    top = np.argsort(-counts, kind="stable")[: MAX_SLICES - 1]
    out = {str(uniq[i]): np.flatnonzero(inverse == i) for i in top}
    rest = np.flatnonzero(~np.isin(inverse, top))
    if len(rest):
        out["(other)"] = rest
    return out


def _num(x: float) -> str:
    return f"{x:.4g}"


def judge(r: VariantResult, source: dict[str, Any], budget: Budget, slices: Slices | None) -> None:
    """Set ``r``'s drops against the source and reject it (with the reasons) when over budget."""
    reasons = []
    if r.auc is not None and source.get("auc") is not None:
        r.auc_drop = source["auc"] - r.auc
        if r.auc_drop > budget.max_auc_drop:
            reasons.append(f"AUC drop {r.auc_drop:.4f} > --max-auc-drop {budget.max_auc_drop}")
    if r.log_loss is not None and source.get("log_loss") is not None:
        r.log_loss_increase = r.log_loss - source["log_loss"]
        limit = budget.max_log_loss_increase
        if limit is not None and r.log_loss_increase > limit:
            reasons.append(f"log loss +{r.log_loss_increase:.4f} > --max-log-loss-increase {limit}")
    if r.ece is not None and source.get("ece") is not None:
        r.ece_increase = r.ece - source["ece"]
        limit = budget.max_ece_increase
        if limit is not None and r.ece_increase > limit:
            reasons.append(f"ECE +{r.ece_increase:.4f} > --max-ece-increase {limit}")
    if slices is not None and r.slice_auc:
        drops = {n: slices.source_auc[n] - a for n, a in r.slice_auc.items()}
        r.worst_slice = max(drops, key=lambda n: drops[n])
        r.worst_slice_auc_drop = drops[r.worst_slice]
        limit = budget.max_auc_drop if budget.max_slice_auc_drop is None else budget.max_slice_auc_drop
        if r.worst_slice_auc_drop > limit:
            reasons.append(f"slice {slices.column}={r.worst_slice}: AUC drop {r.worst_slice_auc_drop:.4f} "
                           f"> --max-slice-auc-drop {limit}")
    if reasons:
        r.status, r.note = "rejected", "; ".join(reasons)


def failing(r: VariantResult) -> str:
    """What a rejected variant failed, for the one-line error when nothing passes."""
    return r.note or f"AUC drop {r.auc_drop or 0.0:.4f}"

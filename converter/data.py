"""Reading calibration and evaluation rows from .npz, .parquet or .csv files.

Columns or arrays are matched to model inputs by name. An input of shape
``[batch, k]`` may also be given as ``k`` columns ``name_0 .. name_{k-1}``
(CSV cannot hold a vector in one column). Values stay raw (strings, sparse
ids): vocabularies are applied later, as the SDK would on a device.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.manifest import TensorSpec

from .errors import DataError

Arrays = dict[str, npt.NDArray[Any]]
SUFFIXES = (".npz", ".parquet", ".csv")


def read_table(path: str | Path) -> Arrays:
    """All columns (or arrays) of a data file, one array per name, rows first."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.suffix not in SUFFIXES:
        raise DataError(f"{p}: unsupported data file type {p.suffix!r} (use .npz, .parquet or .csv)")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        import pandas as pd

        frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except (ValueError, OSError, zipfile.BadZipFile, ImportError) as exc:
        raise DataError(f"{p}: cannot read ({_one_line(exc)})") from exc
    return {str(c): _column(frame[c]) for c in frame.columns}


def _column(series: Any) -> npt.NDArray[Any]:
    values: npt.NDArray[Any] = series.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], list | np.ndarray):
        return np.stack([np.asarray(v) for v in values])  # parquet list column -> 2-D
    if values.dtype == object or str(series.dtype).startswith("str"):
        return values.astype(str)
    return np.asarray(values)


def rows(table: Arrays) -> int:
    return int(next(iter(table.values())).shape[0]) if table else 0


def select_inputs(table: Arrays, specs: Sequence[TensorSpec], where: str) -> Arrays:
    """The arrays for ``specs`` from ``table``, shaped and typed like each input."""
    out: Arrays = {}
    missing = []
    for spec in specs:
        arr = _find(table, spec)
        if arr is None:
            missing.append(spec.name)
            continue
        out[spec.name] = _cast(arr, spec, where)
    if missing:
        have = ", ".join(sorted(table)[:12]) or "nothing"
        raise DataError(
            f"{where}: no column or array for model input(s) {', '.join(missing)} (the file has {have})"
        )
    sizes = {k: v.shape[0] for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"{where}: inputs have different row counts {sizes}")
    if sizes and not next(iter(sizes.values())):
        raise DataError(f"{where}: holds no rows")
    return out


def _find(table: Arrays, spec: TensorSpec) -> npt.NDArray[Any] | None:
    if spec.name in table:
        return table[spec.name]
    tail = spec.shape[1:]
    if len(tail) == 1 and tail[0] is not None:
        cols = [f"{spec.name}_{i}" for i in range(tail[0])]
        if all(c in table for c in cols):
            return np.stack([table[c] for c in cols], axis=1)
    return None


def _cast(arr: npt.NDArray[Any], spec: TensorSpec, where: str) -> npt.NDArray[Any]:
    want_rank = len(spec.shape)
    if arr.ndim == want_rank + 1 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == want_rank - 1 and want_rank == 2 and spec.shape[1] == 1:
        arr = arr[:, None]
    if arr.ndim != want_rank:
        raise DataError(f"{where}: {spec.name} has shape {list(arr.shape)}, the model wants {_fmt(spec)}")
    for got, want in zip(arr.shape[1:], spec.shape[1:], strict=True):
        if want is not None and got != want:
            raise DataError(f"{where}: {spec.name} has shape {list(arr.shape)}, the model wants {_fmt(spec)}")
    if spec.dtype == "string":
        return arr.astype(str)
    if arr.dtype.kind in "USO":
        raise DataError(f"{where}: {spec.name} holds strings, the model wants {spec.dtype}")
    exact = np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) if arr.dtype.kind == "f" else True
    if np.dtype(spec.dtype).kind in "iu" and not exact:
        raise DataError(f"{where}: {spec.name} holds non-integer values, the model wants {spec.dtype}")
    return arr.astype(spec.dtype)


def label_column(table: Arrays, label: str, where: str) -> npt.NDArray[np.float64]:
    """The 0/1 label column for evaluation."""
    if label not in table:
        raise DataError(f"{where}: no label column {label!r} (the file has {', '.join(sorted(table)[:12])})")
    y = np.asarray(table[label], dtype=np.float64).ravel()
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise DataError(f"{where}: label column {label!r} must hold only 0 and 1")
    if y.min() == y.max():
        raise DataError(f"{where}: label column {label!r} holds one class only; AUC needs both")
    return y


def take(table: Arrays, n: int) -> Arrays:
    return {k: v[:n] for k, v in table.items()}


def _fmt(spec: TensorSpec) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

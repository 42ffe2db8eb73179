"""Representative data for full-integer quantization, in each tool's shape.

Rows are already encoded (vocabularies applied), so calibration sees exactly
what the deployed model will. LiteRT takes one row at a time (or a full
fixed batch); ONNX Runtime takes small batches, which makes histogram
calibration (Entropy, Percentile) far faster than row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[Any]]
Advance = Callable[[int], None]


def _rows(encoded: Arrays) -> int:
    return int(next(iter(encoded.values())).shape[0])


def tflite_dataset(
    encoded: Arrays, batch: int | None = None, advance: Advance | None = None
) -> Callable[[], Iterator[Arrays]]:
    """A ``representative_dataset`` callable: one row per sample, or ``batch`` rows for fixed shapes."""
    n = _rows(encoded)

    def gen() -> Iterator[Arrays]:
        if batch is None:
            for i in range(n):
                if advance is not None:
                    advance(1)
                yield {k: v[i : i + 1] for k, v in encoded.items()}
            return
        # A fixed-batch artifact needs full batches: cycle through the rows.
        for start in range(0, n, batch):
            idx = np.arange(start, start + batch) % n
            if advance is not None:
                advance(min(batch, n - start))
            yield {k: v[idx] for k, v in encoded.items()}

    return gen


def ort_samples(encoded: Arrays, chunk: int = 64) -> list[Arrays]:
    """Calibration batches for ``quantize_static``, all of one size.

    Histogram calibration (Entropy, Percentile) stacks the batches, so a short
    last batch would break it; the remainder is dropped when there are full ones.
    """
    n = _rows(encoded)
    size = min(chunk, n)
    starts = range(0, n - size + 1, size)
    return [{k: np.ascontiguousarray(v[s : s + size]) for k, v in encoded.items()} for s in starts]

"""Label mixing: how much each read unit's class mix differs from the whole, against a random order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from daskfeed.inputs import row_bytes

__all__ = [
    "LABEL_UNITS",
    "LABEL_WHOLE_BYTES",
    "MAX_CLASSES",
    "MIXED_GROUPING",
    "UNIT_ROWS",
    "grouping",
    "label_grouping",
    "looks_like_labels",
    "read_cost",
    "sampled_units",
]

#: Read units whose labels are compared with the whole, spread evenly over the sample axis.
LABEL_UNITS = 64
#: Labels taken from the start of each sampled read unit.
UNIT_ROWS = 10_000
#: A label array up to this size is read whole, once; a larger one by its own chunks, each decoded at most once.
#: A loader measures labels only when the reads stay within it.
LABEL_WHOLE_BYTES = 64 * 2**20
#: More distinct values than this (or than a quarter of the labels read) are not class labels.
MAX_CLASSES = 1000
#: At or below this grouping, labels are mixed: one read per chunk gives batches whose class mix is at least as
#: close to the whole's as ``reads_per_chunk="auto"`` gets on a store sorted by label, even when a window holds a
#: single read unit. (Simulated, 10 classes, batches of 128, total variation distance from the whole's mix:
#: a sorted store with auto's reads 0.21-0.22; one read per chunk at grouping 0.16 gives 0.21 with one unit a
#: window, 0.19 with two, 0.16 with four; at 0.27 it gives 0.28, 0.25, 0.20.)
MIXED_GROUPING = 0.15


def looks_like_labels(dtype: Any, sample_shape: Sequence[int]) -> bool:
    """Whether an array of ``dtype`` with samples of ``sample_shape`` can hold class labels: one integer or
    bool per sample (whether it does is told by its values: few distinct ones)."""
    return np.dtype(dtype).kind in "biu" and math.prod(sample_shape) == 1


def sampled_units(bounds: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """The rows read of each sampled read unit: up to :data:`LABEL_UNITS` units spread evenly over the bounds
    (unit starts plus the total), the first :data:`UNIT_ROWS` rows of each."""
    bounds = np.asarray(bounds, dtype=np.int64)
    n_units = len(bounds) - 1
    if n_units < 1:
        return []
    picks = np.unique(np.linspace(0, n_units - 1, min(LABEL_UNITS, n_units)).astype(int))
    return [(int(bounds[c]), int(min(bounds[c + 1], bounds[c] + UNIT_ROWS))) for c in picks]


def read_cost(array: Any, ranges: Sequence[tuple[int, int]]) -> int:
    """Bytes that reading ``ranges`` of a label array decodes (as :func:`label_grouping` reads): nothing for
    numpy, the array for one up to :data:`LABEL_WHOLE_BYTES`, else each of its own chunks touched once."""
    if isinstance(array, np.ndarray):
        return 0
    nbytes = int(array.nbytes)
    if nbytes <= LABEL_WHOLE_BYTES:
        return nbytes
    own = max(1, int(array.chunks[0]))
    touched = {c for start, stop in ranges for c in range(start // own, (stop - 1) // own + 1)}
    return len(touched) * own * row_bytes(array)


def label_grouping(array: Any, bounds: Sequence[int] | np.ndarray, *, max_bytes: int | None = None) -> float | None:
    """How grouped the labels in ``array`` are at the read units ``bounds``: 0 as in a random order, 1 when
    each unit holds one class.

    ``array`` is a zarr array or a numpy array of one label per sample; ``bounds`` are where the read units
    start, plus the total (the chunks of the array a loader reads by, which may differ from the labels' own:
    labels in one chunk are measured at the read units all the same). Up to :data:`LABEL_UNITS` units are
    sampled (see :func:`sampled_units`). None when there is one unit, when the values do not look like class
    labels (one class, or too many distinct values), or when reading them would decode more than ``max_bytes``.
    """
    ranges = sampled_units(bounds)
    if len(ranges) < 2:
        return None  # one unit: nothing to compare, and a window holds it whole
    if max_bytes is not None and read_cost(array, ranges) > max_bytes:
        return None
    read = _reader(array)
    return grouping([read(start, stop) for start, stop in ranges])


def grouping(parts: Sequence[np.ndarray]) -> float | None:
    """The grouping of labels read unit by unit (``parts``): the mean total variation distance between each
    part's class histogram and the whole's, less what the same labels in a random order give, scaled so that
    0 is a random order and 1 is parts of one class each. None when they do not look like class labels."""
    every = np.concatenate(parts)
    classes, codes = np.unique(every, return_inverse=True)
    if len(classes) < 2 or len(classes) > MAX_CLASSES or len(classes) > every.size / 4:
        return None
    codes = codes.reshape(-1)
    sizes = [values.size for values in parts]

    def distance(labels: np.ndarray) -> float:
        overall = np.bincount(labels, minlength=len(classes)) / labels.size
        out, offset = [], 0
        for size in sizes:
            hist = np.bincount(labels[offset : offset + size], minlength=len(classes)) / size
            out.append(0.5 * np.abs(hist - overall).sum())
            offset += size
        return float(np.mean(out))

    # Parts of a randomly ordered store differ from the whole too, by sampling noise; count only the excess.
    # Parts of one class each are as far from the whole as parts can be: on average 1 - sum(p^2).
    noise = distance(np.random.default_rng(0).permutation(codes))
    p = np.bincount(codes) / codes.size
    pure = 1.0 - float((p**2).sum())
    return float(np.clip((distance(codes) - noise) / max(pure - noise, 1e-9), 0.0, 1.0))


def _reader(array: Any) -> Any:
    """``read(start, stop)`` of a label array, flat, decoding each of its own chunks at most once in a row of
    calls (an array up to :data:`LABEL_WHOLE_BYTES` is read whole, once)."""
    n = int(array.shape[0])
    if isinstance(array, np.ndarray) or array.nbytes <= LABEL_WHOLE_BYTES:
        values = np.asarray(array[:]).reshape(n, -1)[:, 0]
        return lambda start, stop: values[start:stop]
    own = max(1, int(array.chunks[0]))
    last: dict[int, np.ndarray] = {}

    def read(start: int, stop: int) -> np.ndarray:
        out = []
        for c in range(start // own, (stop - 1) // own + 1):
            if c not in last:
                last.clear()
                last[c] = np.asarray(array[c * own : min(n, (c + 1) * own)]).reshape(-1)
            lo, hi = max(start, c * own) - c * own, min(stop, (c + 1) * own) - c * own
            out.append(last[c][lo:hi])
        return np.concatenate(out)

    return read

"""``daskfeed.split``: seeded train / validation parts of the samples, each served by its own loader."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskfeed.errors import InputError, InputTypeError

__all__ = ["Part", "Subset", "split"]

#: Keeps the split's random stream apart from the plan's and the transform's.
_SPLIT = 5


@dataclass(frozen=True)
class Subset:
    """Part ``index`` of a split of every read unit's samples at the cumulative fractions ``cuts``.

    In read unit (chunk) ``c`` of ``L`` samples, a generator seeded by ``(seed, c)`` draws ``u`` in [0, 1) and a
    permutation of the ``L`` samples; part ``j`` keeps the samples at positions ``[floor(cuts[j] * L + u),
    floor(cuts[j + 1] * L + u))`` of it. The parts of one split are disjoint and cover every sample, every chunk
    gives each part its share (so every class of a store sorted by label is in every part), and the counts
    add up to the fractions on average whatever the chunk sizes. Nothing per sample is stored.
    """

    seed: int
    cuts: tuple[float, ...]
    index: int

    def _draw(self, chunk: int, length: int, permute: bool) -> tuple[int, int, np.ndarray | None]:
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), _SPLIT, int(chunk)]))
        u = rng.random()
        lo, hi = (min(length, math.floor(c * length + u)) for c in self.cuts[self.index : self.index + 2])
        if self.index == 0:
            lo = 0
        if self.index == len(self.cuts) - 2:
            hi = length
        return lo, hi, rng.permutation(length) if permute else None

    def counts(self, lengths: np.ndarray) -> np.ndarray:
        """Samples this part keeps of each read unit (``lengths`` samples each)."""
        out = np.empty(len(lengths), np.int64)
        for c, length in enumerate(lengths.tolist()):
            lo, hi, _ = self._draw(c, length, False)
            out[c] = hi - lo
        return out

    def rows(self, chunk: int, length: int) -> np.ndarray:
        """The chunk-local samples this part keeps of read unit ``chunk``, sorted."""
        lo, hi, perm = self._draw(chunk, length, True)
        return np.sort(perm[lo:hi])

    def describe(self) -> list[Any]:
        return [self.seed, list(self.cuts), self.index]


@dataclass(frozen=True, eq=False)
class Part:
    """One part of :func:`split`: the arrays and which of their samples it serves. Pass it as ``x`` (alone) to
    :class:`daskfeed.Loader`, :func:`daskfeed.as_sequence` or :func:`daskfeed.as_dataset`."""

    x: Any
    y: Any
    sample_weight: Any
    subset: Subset
    fraction: float

    def __repr__(self) -> str:
        return (
            f"<daskfeed.Part {self.subset.index} of a split: {self.fraction:g} of the samples, seed={self.subset.seed}>"
        )


def split(arrays: Any, fractions: Sequence[float], *, seed: int = 0) -> tuple[Part, ...]:
    """Split the samples of ``arrays`` into disjoint seeded parts (train / validation) that keep the fast read path.

    Every read unit (chunk) gives each part its share of its samples, drawn from ``seed``: not a slice by position,
    so on a store sorted by label every class is in every part, and the parts read the arrays as they are (no
    dask slicing, which would lose daskfeed's zarr read). The parts are disjoint and cover every sample, for
    loaders over the same arrays with the same ``window`` and ``stride`` (a sample cut by ``window=`` is split
    as a whole: windows of a series in different parts may share time steps).

    Parameters
    ----------
    arrays : array, dict of arrays, or tuple ``(x, y)`` / ``(x, y, sample_weight)``
        What you would give a loader as ``x`` (and ``y``, ``sample_weight``).
    fractions : sequence of float
        The share of each part, each > 0, adding up to 1: ``[0.9, 0.1]``. Each part's count is its share of each
        chunk, rounded up or down at random (seeded), so the totals match the fractions to within a sample per
        chunk.
    seed : int, default 0
        Draws the split; independent of the loaders' ``seed`` (which shuffles each part's epochs).

    Returns
    -------
    tuple of Part
        One per fraction. Give each to a loader or a door alone: ``as_sequence(parts[0], batch_size=128)``.

    Notes
    -----
    Each part is its own loader with its own ``memory_budget``. A part reads whole chunks and keeps its
    samples: when the data fits a part's budget it is decoded once and held whole (every part holding all
    of it), so give the parts budgets that add up to what the machine has; when it does not, a part
    decodes every chunk once per epoch to serve its share, so a validation part of 10% decodes 10 times the
    bytes it serves (``loader.layout.amplification`` is counted for all the samples, not the part's).
    Validation runs once per epoch over few samples: a small budget streams it at the cost of decode time only.

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x, y = np.arange(1000.0)[:, None], np.arange(1000) // 100  # sorted by label
    >>> train, val = daskfeed.split((x, y), [0.8, 0.2], seed=0)
    >>> with daskfeed.Loader(train, batch_size=64) as a, daskfeed.Loader(val, batch_size=64) as b:
    ...     tr = np.concatenate([y for _, y in a]); va = np.concatenate([y for _, y in b])
    >>> len(tr), len(va), sorted(set(va.tolist())) == list(range(10))
    (800, 200, True)
    """
    if isinstance(arrays, tuple):
        if not 1 <= len(arrays) <= 3:
            raise InputError(
                f"arrays must be x or a tuple (x, y) or (x, y, sample_weight), got a tuple of {len(arrays)}"
            )
        x, y, w = (*arrays, None, None)[:3]
    else:
        x, y, w = arrays, None, None
    if isinstance(x, Part):
        raise InputTypeError("arrays is already a part of a split; split the arrays themselves, with more fractions")
    from daskfeed.inputs import normalize_inputs

    normalize_inputs(x, y, w)  # the arrays are checked here, not in each loader
    cuts = check_fractions(fractions)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputTypeError(f"seed must be an int >= 0, got {seed!r}")
    return tuple(
        Part(x, y, w, Subset(int(seed), cuts, j), float(f)) for j, f in enumerate(np.diff(np.asarray(cuts)).tolist())
    )


def check_fractions(fractions: Any) -> tuple[float, ...]:
    """The cumulative cuts ``(0, f0, f0 + f1, ..., 1)`` of ``fractions``; an error naming the knob otherwise."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence):
        raise InputTypeError(
            f"fractions must be a list of floats adding up to 1, such as [0.9, 0.1], got {fractions!r}"
        )
    values = []
    for f in fractions:
        if isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, float, np.integer, np.floating)):
            raise InputTypeError(f"fractions must be numbers, got {f!r} in {list(fractions)!r}")
        if not (math.isfinite(f) and f > 0):
            raise InputError(f"fractions must each be > 0, got {f!r} in {list(fractions)!r}")
        values.append(float(f))
    if len(values) < 2:
        raise InputError(f"fractions must name at least two parts, such as [0.9, 0.1], got {list(fractions)!r}")
    if abs(sum(values) - 1) > 1e-6:
        raise InputError(f"fractions must add up to 1, got {list(fractions)!r} (sum {sum(values):g})")
    cuts = np.concatenate([[0.0], np.cumsum(values)])
    cuts[-1] = 1.0
    return tuple(cuts.tolist())

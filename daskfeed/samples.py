"""Samples as users define them: windows of a series on axis 0 and patches on other axes (``window=``, ``stride=``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from daskfeed.errors import InputError, InputTypeError

__all__ = [
    "Cut",
    "Gather",
    "Geometry",
    "RowMap",
    "SampleUnits",
    "check_stride",
    "check_window",
    "hold",
    "sample_geometry",
]


def _check_axes(name: str, value: Any, what: str) -> dict[int, int]:
    if not isinstance(value, Mapping):
        raise InputTypeError(
            f"{name} must be a dict {{axis: {what}}} of ints, such as {{0: 48}} or {{1: 64, 2: 64}}, got "
            f"{type(value).__name__} {value!r}"
        )
    if not value:
        raise InputError(f"{name} must name at least one axis, got {{}}; leave it out (None) for one sample per row")
    out = {}
    for axis, size in value.items():
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise InputTypeError(f"{name} keys must be axes (ints >= 0), got {axis!r} in {name}={value!r}")
        if axis < 0:
            raise InputError(
                f"{name} axes must be >= 0 (axis 0 is the sample axis, time in a series), got {axis} in "
                f"{name}={value!r}"
            )
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise InputTypeError(f"{name}[{axis}] must be an int >= 1 ({what}), got {size!r} in {name}={value!r}")
        if size < 1:
            raise InputError(f"{name}[{axis}] must be >= 1 ({what}), got {size} in {name}={value!r}")
        out[int(axis)] = int(size)
    return dict(sorted(out.items()))


def check_window(window: Any) -> dict[int, int] | None:
    """``window`` as a dict ``{axis: length}`` sorted by axis, or None; an error naming ``window`` otherwise.

    Examples
    --------
    >>> check_window({2: 64, 1: 64})
    {1: 64, 2: 64}
    """
    return None if window is None else _check_axes("window", window, "a length")


def check_stride(stride: Any, window: dict[int, int] | None) -> dict[int, int] | None:
    """``stride`` as a dict ``{axis: step}`` over axes ``window`` cuts, or None; an error naming ``stride``
    otherwise."""
    if stride is None:
        return None
    stride = _check_axes("stride", stride, "a step")
    if window is None:
        raise InputError(f"stride={stride!r} needs window: stride steps a window along its axes, e.g. window={{0: 48}}")
    extra = [axis for axis in stride if axis not in window]
    if extra:
        raise InputError(
            f"stride={stride!r} names axis {extra[0]}, which window={window!r} does not cut; stride steps a window "
            f"along its own axes: add axis {extra[0]} to window, or drop it from stride"
        )
    return stride


class Cut(NamedTuple):
    """How one leaf is served: the rows it spans from a sample's start, the patch axes it is cut on, its shape."""

    name: str
    #: Takes the window's ``length`` rows from the start (x when the window names axis 0); else the start row.
    series: bool
    #: Indices into :attr:`Geometry.axes` of the patch axes this leaf is cut on.
    axes: tuple[int, ...]
    sample_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def bytes_per_sample(self) -> int:
        return self.dtype.itemsize * math.prod(self.sample_shape)


@dataclass(frozen=True, eq=False)
class Geometry:
    """What one sample is: the block of ``x`` that starts at a point of the stride grid and spans the window.

    Sample ``i`` is start ``k = i // n_patches`` on axis 0 (row ``k * step``) and patch ``i % n_patches`` (C order
    over the patch axes), so the samples whose start lies in a chunk are one run of ids: the plan's read units
    stay the chunks of axis 0.
    """

    window: dict[int, int]
    stride: dict[int, int]
    n_rows: int
    #: Rows a sample spans on axis 0 (``window[0]``, or 1 when the window does not name axis 0) and its step.
    length: int
    step: int
    series: bool
    #: The patch axes (>= 1), their window lengths, steps and positions.
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    steps: tuple[int, ...]
    counts: tuple[int, ...]
    cuts: tuple[Cut, ...]

    @property
    def n_starts(self) -> int:
        return (self.n_rows - self.length) // self.step + 1

    @property
    def n_patches(self) -> int:
        return math.prod(self.counts)

    @property
    def n_samples(self) -> int:
        return self.n_starts * self.n_patches

    def describe(self) -> str:
        parts = []
        if self.series:
            parts.append(f"windows of {self.length} rows every {self.step}")
        if self.axes:
            shape = "x".join(map(str, self.sizes))
            parts.append(f"patches of {shape} on axes {', '.join(map(str, self.axes))} ({self.n_patches} per row)")
        return f"{self.n_samples} samples: " + " and ".join(parts)

    def units(self, row_bounds: np.ndarray) -> SampleUnits:
        """The read units over the chunks ``row_bounds`` (rows where chunks start, plus the total)."""
        bounds = np.asarray(row_bounds, np.int64)
        first = np.minimum(self.n_starts, -(-bounds // self.step))  # the first start at or after each bound
        chunks = np.flatnonzero(np.diff(first) > 0)
        k = np.append(first[chunks], first[chunks[-1] + 1])
        lo = first[chunks] * self.step
        hi = (first[chunks + 1] - 1) * self.step + self.length
        return SampleUnits(bounds, chunks.astype(np.int64), k * self.n_patches, lo, hi)

    def gather(self, leaf: int, array: np.ndarray, rows: np.ndarray, patches: np.ndarray | None, out: np.ndarray):
        """Write leaf ``leaf``'s samples into ``out``: each starts at row ``rows[j]`` of ``array`` (raw rows, a
        window buffer or an array held in memory), at patch ``patches[j]``. Vectorized, one copy."""
        cut = self.cuts[leaf]
        if not cut.axes:
            idx = rows[:, None] + np.arange(self.length) if cut.series else rows
            if array.flags.c_contiguous:  # np.take would copy a strided array whole first
                np.take(array, idx, axis=0, out=out, mode="clip")
            else:
                out[...] = array[idx]
            return
        if patches is None:  # one patch position per row
            pos = (np.zeros(len(rows), np.intp),) * len(self.counts)
        else:
            pos = np.unravel_index(patches, self.counts)
        out[...] = self._view(cut, array)[(rows, *(pos[j] for j in cut.axes))]

    def _view(self, cut: Cut, array: np.ndarray) -> np.ndarray:
        """A view of ``array`` indexed by (start row, patch position on each cut axis, *sample index)."""
        st = array.strides
        shape = [array.shape[0] - (self.length - 1 if cut.series else 0)]
        strides = [st[0]]
        for j in cut.axes:
            shape.append(self.counts[j])
            strides.append(self.steps[j] * st[self.axes[j]])
        if cut.series:
            shape.append(self.length)
            strides.append(st[0])
        cut_axes = {self.axes[j]: self.sizes[j] for j in cut.axes}
        for a in range(1, array.ndim):
            shape.append(cut_axes.get(a, array.shape[a]))
            strides.append(st[a])
        return np.lib.stride_tricks.as_strided(array, shape, strides, writeable=False)


@dataclass(frozen=True, eq=False)
class SampleUnits:
    """The read units of a :class:`Geometry`: the unit array's chunks that hold a sample start, each with the
    samples that start in it and the rows those samples span (up to ``length - 1`` rows into the next chunks)."""

    #: The unit array's chunks on axis 0: rows where they start, plus the total.
    row_bounds: np.ndarray
    #: The chunk of each read unit (chunks where no sample starts are no unit).
    chunks: np.ndarray
    #: Where each unit's samples start, plus the total: the plan's ``chunk_bounds``.
    sample_bounds: np.ndarray
    #: Rows ``[lo, hi)`` each unit's samples span.
    lo: np.ndarray
    hi: np.ndarray

    def own_stop(self, units: np.ndarray) -> np.ndarray:
        """Where each unit's own chunk ends: rows from there on are its heads."""
        return self.row_bounds[self.chunks[units] + 1]


class RowMap(NamedTuple):
    """Rows of an array held in memory as runs ``[lo, hi)`` end to end: global row -> row in memory."""

    lo: np.ndarray
    hi: np.ndarray
    at: np.ndarray

    @classmethod
    def of(cls, lo: np.ndarray, hi: np.ndarray) -> RowMap:
        """The runs that cover the ranges ``[lo, hi)`` (touching or overlapping ranges merged), end to end."""
        keep = hi > lo
        lo, hi = np.asarray(lo, np.int64)[keep], np.asarray(hi, np.int64)[keep]
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], np.maximum.accumulate(hi[order]) if len(hi) else hi
        new = np.ones(len(lo), bool)
        new[1:] = lo[1:] > hi[:-1]
        starts = np.flatnonzero(new)
        run_lo = lo[starts]
        run_hi = np.maximum.reduceat(hi, starts) if len(starts) else hi[:0]
        at = np.concatenate([[0], np.cumsum(run_hi - run_lo)[:-1]]).astype(np.int64) if len(starts) else run_lo
        return cls(run_lo, run_hi, at)

    @property
    def rows(self) -> int:
        return int((self.hi - self.lo).sum())

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        run = np.searchsorted(self.lo, rows, side="right") - 1
        return rows - self.lo[run] + self.at[run]


def hold(lo: int, hi: int, starts: np.ndarray, reach: int, whole: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """The rows of ``[lo, hi)`` that samples starting at ``starts`` (sorted) span, ``reach`` rows each, as
    ``(rows - lo or None for all of them, where each start lands among those rows)``. ``whole`` says they span
    every row (one read per chunk, windows that overlap or touch)."""
    rel = starts - lo
    if whole:
        return None, rel
    n = hi - lo
    need = np.cumsum(np.bincount(rel, minlength=n + 1) - np.bincount(rel + reach, minlength=n + 1))[:n] > 0
    if need.all():
        return None, rel
    return np.flatnonzero(need), (np.cumsum(need) - 1)[rel]


class Gather(NamedTuple):
    """A window's take for one leaf: each sample's start row in the array served from, and its patch."""

    geometry: Geometry
    leaf: int
    rows: np.ndarray
    patches: np.ndarray | None

    def into(self, array: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
        patches = None if self.patches is None else self.patches[lo:hi]
        self.geometry.gather(self.leaf, array, self.rows[lo:hi], patches, out)


def sample_geometry(inputs: Any, window: dict[int, int] | None, stride: dict[int, int] | None) -> Geometry | None:
    """The :class:`Geometry` of ``window`` and ``stride`` (checked by :class:`daskfeed.LoaderOptions`) over the
    loader's leaves, or None for one sample per row. Errors name the knob and the array."""
    if window is None:
        return None
    stride = dict(stride or {})
    leaves = inputs.leaves
    xs = [leaf for leaf in leaves if leaf.role == "x"]
    patch_axes = [a for a in window if a > 0]
    deepest = max(patch_axes, default=0)
    ref = next((leaf for leaf in xs if leaf.array.ndim > deepest), None)
    if ref is None:
        shapes = ", ".join(f"{leaf.name} {tuple(leaf.array.shape)}" for leaf in xs)
        raise InputError(
            f"window={window!r} names axis {deepest}, but x has no such axis ({shapes}); axes count from 0, the "
            "sample axis"
        )
    shape = tuple(int(s) for s in ref.array.shape)
    for axis, size in window.items():
        if size > shape[axis]:
            what = "rows" if axis == 0 else "long"
            raise InputError(
                f"window={window!r} is longer than axis {axis} of {ref.name} ({shape[axis]} {what}, shape {shape}); "
                f"a window must fit inside the array: window[{axis}] <= {shape[axis]}"
            )
    length = window.get(0, 1)
    sizes = tuple(window[a] for a in patch_axes)
    steps = tuple(stride.get(a, window[a]) for a in patch_axes)
    counts = tuple((shape[a] - w) // s + 1 for a, w, s in zip(patch_axes, sizes, steps))
    cuts = []
    for leaf in leaves:
        lshape = tuple(int(s) for s in leaf.array.shape)
        axes = tuple(j for j, a in enumerate(patch_axes) if len(lshape) > a and lshape[a] == shape[a])
        series = leaf.role == "x" and 0 in window
        served = [length] if series else []
        for a in range(1, len(lshape)):
            j = patch_axes.index(a) if a in patch_axes else -1
            served.append(sizes[j] if j in axes else lshape[a])
        cuts.append(Cut(leaf.name, series, axes, tuple(served), np.dtype(leaf.dtype)))
    return Geometry(
        window=dict(window),
        stride={a: stride.get(a, window[a]) for a in window},
        n_rows=int(inputs.n_samples),
        length=length,
        step=stride.get(0, length),
        series=0 in window,
        axes=tuple(patch_axes),
        sizes=sizes,
        steps=steps,
        counts=counts,
        cuts=tuple(cuts),
    )

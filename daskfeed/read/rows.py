"""The read path's one record, :class:`Rows`, and what it is read from and into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from daskfeed._compat import dask_keys
from daskfeed.inputs import chunk_bounds, row_bytes, zarr_behind
from daskfeed.read.codec import ChunkCodec

__all__ = ["BlockSource", "ReadJob", "Rows", "rows_at"]


class Rows(NamedTuple):
    """These rows of this chunk go here: samples ``[start, stop)`` of an array (all of them, or the sorted
    offsets ``keep`` from ``start``) go to the buffer from row ``at`` on.

    The one record of the read path, at each of its levels: the plan's read of a chunk (a read unit), the
    part of it that one dask block holds, the part that one stored zarr chunk holds. ``chunk`` numbers the
    chunk of that level, for messages; ``start`` and ``stop`` are the array's own sample indices at every level.
    """

    chunk: int
    start: int
    stop: int
    keep: np.ndarray | None  # sorted offsets from start, or None for every sample of [start, stop)
    at: int  # the buffer row (the stream position, with a scatter) the first kept sample goes to

    @property
    def count(self) -> int:
        return self.stop - self.start if self.keep is None else len(self.keep)

    def local(self, base: int) -> slice | np.ndarray:
        """The kept samples as rows of data that begins at sample ``base``."""
        if self.keep is None:
            return slice(self.start - base, self.stop - base)
        return self.keep + (self.start - base)

    def within(self, lo: int, hi: int, chunk: int) -> Rows | None:
        """The part of this read that lies in samples ``[lo, hi)`` (a block or stored chunk numbered ``chunk``),
        or None when it keeps nothing there."""
        a, z = max(lo, self.start), min(hi, self.stop)
        if z <= a:
            return None
        if self.keep is None:
            return Rows(chunk, a, z, None, self.at + a - self.start)
        first, last = np.searchsorted(self.keep, [a - self.start, z - self.start])
        if last <= first:
            return None
        return Rows(chunk, a, z, self.keep[first:last] - (a - self.start), self.at + int(first))


def rows_at(scatter: np.ndarray | None, at: int, count: int) -> slice | np.ndarray:
    """The buffer rows that ``count`` rows from stream position ``at`` go to (see :attr:`ReadJob.scatter`)."""
    return slice(at, at + count) if scatter is None else scatter[at : at + count]


class BlockSource:
    """One lazy array as the read path sees it: the zarr array behind it and its codec (the fast path), or
    its optimized task graph and the key of each block along the sample axis.

    The graph is materialized once; a read then takes only the tasks its blocks need (a cull that walks
    from those keys), so reading costs the same on an array of a hundred chunks or of a million.
    """

    def __init__(self, array: da.Array):
        #: The zarr array itself when the dask array is exactly that array: read without a copy.
        self.zarr = zarr_behind(array)
        #: How to decode its stored chunks on daskfeed's threads, when that can be done (see ChunkCodec).
        self.codec = ChunkCodec.of(self.zarr) if self.zarr is not None else None
        self.row_bytes = row_bytes(array)
        self.bounds = chunk_bounds(array)
        self.graph: dict = {}
        self.keys: list = []
        if self.zarr is None:
            if any(len(c) > 1 for c in array.chunks[1:]):
                # One task per sample-axis block, so each block is computed once however the other axes are cut.
                array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
            (array,) = dask.optimize(array)
            self.graph = dict(array.__dask_graph__())
            self.keys = dask_keys(array)

    def block_range(self, block: int) -> tuple[int, int]:
        """The ``(start, stop)`` samples of ``block``."""
        return int(self.bounds[block]), int(self.bounds[block + 1])

    def parts(self, read: Rows) -> list[Rows]:
        """The blocks that hold the samples ``read`` keeps, each clipped to the read (blocks may straddle reads)."""
        first = int(np.searchsorted(self.bounds, read.start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, read.stop - 1, side="right")) - 1
        parts = (read.within(*self.block_range(b), b) for b in range(first, last + 1))
        return [p for p in parts if p is not None]


@dataclass(eq=False)
class ReadJob:
    """Reads of one array into one buffer: what a window (or the data held whole) needs of that array."""

    name: str  # the array's name, for messages
    source: BlockSource
    buffer: np.ndarray
    reads: list[Rows]
    #: Where each row goes: row ``at`` of the reads' stream lands in ``buffer[scatter[at]]`` (a window written
    #: in its serving order, so that batches are cut as slices); None for ``buffer[at]``.
    scatter: np.ndarray | None = None

    #: The parts to read, by block: a block that several reads take from is read once.
    blocks: dict[int, list[Rows]] = field(init=False)

    def __post_init__(self) -> None:
        # Worked out here, not in a functools.cached_property: on Python 3.11 that takes one lock shared by every
        # instance, which a process forked while a reading thread held it inherits held, and hangs on.
        self.blocks = {}
        for read in self.reads:
            for part in self.source.parts(read):
                self.blocks.setdefault(part.chunk, []).append(part)

    def put(self, parts: list[Rows], data: Any, base: int) -> None:
        """Copy each part's rows of ``data`` (samples from ``base`` on) into place."""
        for p in parts:
            self.buffer[rows_at(self.scatter, p.at, p.count)] = data[p.local(base)]

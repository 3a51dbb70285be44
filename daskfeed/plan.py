"""The epoch plan: chunk boundaries, seed and epoch in, windows of reads and batches out; no I/O.

Words: a read unit is a chunk along the sample axis (``chunk_bounds``); a *read* is one of the
``reads_per_chunk`` reads of a read unit, which keeps a disjoint share of its samples (the ``read_*`` arrays of
:class:`EpochPlan`, one entry per read; the reader gets each as a :class:`daskfeed.read.Rows`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import InputError

__all__ = ["EpochPlan", "PlanConfig", "shard_chunks"]

#: Epoch 0 starts with small windows, so that its first batch waits for a small read: its first window holds this
#: many reads (of as many chunks when there are that many, drawn from all over the array: what
#: ``reads_per_chunk="auto"`` counts as enough places to draw a batch from, so a store sorted by label still gives
#: mixed batches), each next one twice as many, up to a full window. Data that fits the budget
#: (``PlanConfig.progressive``) is served this way while its one decode runs, its chunks decoded in that seeded
#: random order; streamed data reads the small windows first. Only where a full window holds at least twice as many
#: reads.
FIRST_WINDOW_CHUNKS = 32

# Keys that keep the random streams of the plan independent of one another.
_SHARD, _ORDER, _ROWS, _WINDOW = 0, 1, 2, 3


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


@dataclass(frozen=True, eq=False)
class PlanConfig:
    """Everything the plan depends on; the knobs in it were validated by :class:`daskfeed.LoaderOptions`.

    ``chunk_bounds`` are the sample offsets where read units (chunks) start, plus the total:
    ``[0, 1000, 2000, 2500]``. A ``resident`` plan makes every epoch one window of the whole shard, in
    storage order before its shuffle: the loader holds all of it in memory.

    With ``segment_rows`` (samples cut by ``window=``: see :mod:`daskfeed.samples`) a window holds raw rows,
    not one row per sample: a read of chunk ``c`` that keeps ``m`` samples holds at most
    ``min(segment_rows[c], m * sample_rows)`` rows, and windows are packed to ``window_rows`` rows instead of
    ``window_samples`` samples.

    With ``subset`` (a :class:`daskfeed.parts.Subset`) each read unit keeps only the part's samples, and the
    ``reads_per_chunk`` reads of a unit partition those.
    """

    chunk_bounds: np.ndarray
    batch_size: int
    seed: int
    shuffle: bool = True
    drop_remainder: bool = False
    reads_per_chunk: int = 1
    window_samples: int = 1 << 62
    shard: tuple[int, int] = (0, 1)
    resident: bool = False
    segment_rows: np.ndarray | None = None
    sample_rows: int = 1
    window_rows: int = 0
    #: A part of :func:`daskfeed.split`: each read unit keeps only that part's samples.
    subset: Any = None
    #: The shard's chunks when the layout has drawn them already (:func:`shard_chunks`, from shard and seed).
    shard_chunks: np.ndarray | None = field(default=None, repr=False)
    #: A resident plan whose epoch 0 is served while it is decoded (see :data:`FIRST_WINDOW_CHUNKS`).
    progressive: bool = False
    _chunks: np.ndarray = field(init=False, repr=False)
    lengths: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bounds = np.asarray(self.chunk_bounds, dtype=np.int64)
        if bounds.ndim != 1 or len(bounds) < 2 or bounds[0] != 0 or np.any(np.diff(bounds) <= 0):
            raise InputError(f"chunk_bounds must rise strictly from 0, got {bounds.tolist()[:10]}")
        object.__setattr__(self, "chunk_bounds", bounds)
        chunks = self.shard_chunks
        if chunks is None:
            chunks = shard_chunks(len(bounds) - 1, self.shard, self.seed, self.shuffle)
        object.__setattr__(self, "_chunks", np.asarray(chunks, dtype=np.int64))
        lengths = np.diff(bounds)
        #: Samples of each read unit this plan serves: all of them, or the part's.
        object.__setattr__(self, "lengths", lengths if self.subset is None else self.subset.counts(lengths))

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bounds) - 1

    @property
    def chunks(self) -> np.ndarray:
        """The chunks of this config's shard, the same every epoch, in storage order."""
        return self._chunks


def shard_chunks(n_chunks: int, shard: tuple[int, int], seed: int, shuffle: bool) -> np.ndarray:
    """Chunk indices that belong to ``shard = (index, count)``, sorted; the shards partition all chunks.

    With ``shuffle`` the chunks are dealt round-robin from a permutation drawn from the seed alone, so each
    shard holds the same chunks (and the same number of samples) every epoch; without it each shard is a
    contiguous run of chunks.
    """
    index, count = shard
    if count > n_chunks:
        raise InputError(
            f"shard={tuple(shard)!r} asks for {count} shards but the arrays have only {n_chunks} read units "
            "(chunks) on the sample axis; shards are made of whole read units, so use at most that many."
        )
    if count == 1:
        return np.arange(n_chunks, dtype=np.int64)
    if shuffle:
        order = _rng(seed, _SHARD).permutation(n_chunks)
        return np.sort(order[index::count])
    return np.array_split(np.arange(n_chunks, dtype=np.int64), count)[index]


class EpochPlan:
    """The windows and batches of one epoch of one shard.

    The epoch is a stream of ``n_samples`` positions. Windows cut it into runs of whole reads; batch
    ``i`` is positions ``[i * batch_size, (i + 1) * batch_size)`` and may span two windows. Memory is
    O(reads); per-sample orders are drawn per window when asked for.
    """

    def __init__(self, config: PlanConfig, epoch: int):
        if epoch < 0:
            raise InputError(f"epoch must be >= 0, got {epoch}")
        self.config = config
        self.epoch = epoch
        self.resident = config.resident
        #: Reads per chunk in this epoch: one when it is served from memory.
        self.reads = 1 if self.resident else config.reads_per_chunk
        chunks, reads = config.chunks, self.reads
        #: Whether this epoch is served while the loader's one decode runs: in windows of chunks in decode order.
        self.progressive = bool(config.progressive and epoch == 0 and self.resident and config.shuffle)
        if config.shuffle and (not self.resident or self.progressive):
            rng = _rng(config.seed, epoch, _ORDER)
            read_chunk = np.concatenate([rng.permutation(chunks) for _ in range(reads)])
            read_part = np.repeat(np.arange(reads, dtype=np.int64), len(chunks))
        else:
            read_chunk = chunks.copy()
            read_part = np.zeros(len(chunks), dtype=np.int64)
        lengths = config.lengths[read_chunk]
        # Part p of a chunk of length L keeps rows [p*L//r, (p+1)*L//r) of the chunk's row permutation.
        sizes = (read_part + 1) * lengths // reads - read_part * lengths // reads
        keep = sizes > 0
        self.read_chunk = read_chunk[keep]
        self.read_part = read_part[keep]
        self.read_size = sizes[keep]
        read_offsets = np.concatenate([[0], np.cumsum(self.read_size)])
        self.n_samples = int(read_offsets[-1])
        if config.segment_rows is None:
            #: Rows each read holds in a window (at most): one per sample, or raw rows samples are cut from.
            self.read_held, held_offsets, cap = self.read_size, read_offsets, config.window_samples
        else:
            segments = np.asarray(config.segment_rows, np.int64)[self.read_chunk]
            self.read_held = np.minimum(segments, self.read_size * config.sample_rows)
            held_offsets, cap = np.concatenate([[0], np.cumsum(self.read_held)]), config.window_rows
        cap = int(held_offsets[-1]) if self.resident else cap
        first = 0  # rows of epoch 0's first window when it starts small, else 0
        if epoch == 0 and (self.progressive or not self.resident):
            full = int(np.searchsorted(held_offsets, cap, side="right")) - 1  # reads of a full window
            if full >= 2 * FIRST_WINDOW_CHUNKS:  # windows of 32, 64, 128... reads, then full ones
                first = int(held_offsets[FIRST_WINDOW_CHUNKS])
        # A small window still holds more than a batch, so that a batch spans at most two windows.
        least = int(self.read_held.max()) + config.batch_size if first else 0
        #: Whether this epoch starts with small windows (:data:`FIRST_WINDOW_CHUNKS` reads, then twice as many...).
        self.starts_small = bool(first)
        self.window_reads = self._pack(held_offsets, cap, first, least)
        self.held_offsets = held_offsets
        self.window_offsets = read_offsets[self.window_reads]
        self._offsets = self.window_offsets.tolist()
        self.read_offsets = read_offsets
        bs = config.batch_size
        self.n_batches = self.n_samples // bs if config.drop_remainder else -(-self.n_samples // bs)
        #: Samples served this epoch: ``n_samples`` minus the remainder ``drop_remainder`` drops.
        self.n_served = min(self.n_samples, self.n_batches * bs)

    @staticmethod
    def _pack(read_offsets: np.ndarray, window_samples: int, first: int = 0, least: int = 0) -> np.ndarray:
        """Greedy packing: a window takes reads while they fit in ``window_samples``, and at least one; with
        ``first``, window ``k`` in ``first * 2**k`` while that is smaller, but at least ``least`` samples."""
        starts = [0]
        n_reads = len(read_offsets) - 1
        cap = first or window_samples
        while starts[-1] < n_reads:
            s = starts[-1]
            take = min(window_samples, max(least, cap))
            stop = int(np.searchsorted(read_offsets, read_offsets[s] + take, side="right")) - 1
            starts.append(min(max(stop, s + 1), n_reads))
            cap = min(window_samples, 2 * cap)
        return np.asarray(starts, dtype=np.int64)

    @property
    def n_windows(self) -> int:
        return len(self.window_reads) - 1

    def reads_of(self, window: int) -> range:
        """Indices of the reads of ``window``."""
        return range(int(self.window_reads[window]), int(self.window_reads[window + 1]))

    def window_size(self, window: int) -> int:
        return int(self.window_offsets[window + 1] - self.window_offsets[window])

    def window_rows(self, window: int) -> int:
        """Rows a window's buffers hold at most: its samples, or the raw rows they are cut from."""
        return int(self.held_offsets[self.window_reads[window + 1]] - self.held_offsets[self.window_reads[window]])

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """The ``(start, stop)`` samples of a chunk."""
        b = self.config.chunk_bounds
        return int(b[chunk]), int(b[chunk + 1])

    def kept_rows(self, unit: int) -> np.ndarray | None:
        """Sorted chunk-local rows that read number ``unit`` keeps, or None for the whole chunk."""
        reads, subset = self.reads, self.config.subset
        chunk, part = int(self.read_chunk[unit]), int(self.read_part[unit])
        kept = None
        if subset is not None:
            start, stop = self.chunk_range(chunk)
            kept = subset.rows(chunk, stop - start)
        if reads == 1:
            return kept
        length = int(self.config.lengths[chunk])
        # The same stream for every read of the chunk in this epoch, so the r parts are disjoint.
        perm = _rng(self.config.seed, self.epoch, _ROWS, chunk).permutation(length)
        mine = np.sort(perm[part * length // reads : (part + 1) * length // reads])
        return mine if kept is None else kept[mine]

    def window_order(self, window: int) -> np.ndarray | None:
        """The order in which a window's samples are served, or None for storage order."""
        if not self.config.shuffle:
            return None
        return _rng(self.config.seed, self.epoch, _WINDOW, window).permutation(self.window_size(window))

    def batch_span(self, index: int) -> tuple[int, int]:
        """Positions ``(start, stop)`` of batch ``index`` in the epoch stream."""
        if not 0 <= index < self.n_batches:
            raise IndexError(f"batch index {index} is out of range for an epoch of {self.n_batches} batches")
        bs = self.config.batch_size
        return index * bs, min((index + 1) * bs, self.n_served)

    def windows_of(self, start: int, stop: int) -> range:
        """The windows that positions ``[start, stop)`` fall in."""
        offsets = self._offsets  # bisect on a list: this runs once per batch, and numpy's call costs more
        return range(bisect.bisect_right(offsets, start) - 1, bisect.bisect_right(offsets, stop - 1))

    def batches_of(self, window: int) -> range:
        """The batches that take at least one sample of ``window`` (empty if all of it is dropped)."""
        bs = self.config.batch_size
        start = int(self.window_offsets[window])
        stop = min(int(self.window_offsets[window + 1]), self.n_served)
        if start >= stop:
            return range(0)
        return range(start // bs, (stop - 1) // bs + 1)

    def rows(self, window: int, base: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """``base[chunk] + row in chunk`` for each sample of ``window``, in read order or, given, ``order``.

        With ``base = chunk_bounds[:-1]`` these are the global sample indices; with the offsets where each
        chunk sits in a buffer that holds chunks whole, the rows of that buffer. O(window).
        """
        parts = []
        for u in self.reads_of(window):
            rows = self.kept_rows(u)
            local = np.arange(int(self.read_size[u]), dtype=np.int64) if rows is None else rows
            parts.append(int(base[int(self.read_chunk[u])]) + local)
        flat = np.concatenate(parts)
        return flat if order is None else flat[order]

    def samples(self, window: int) -> np.ndarray:
        """Global sample indices of a window, in serving order (O(window))."""
        return self.rows(window, self.config.chunk_bounds[:-1], self.window_order(window))

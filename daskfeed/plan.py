"""The epoch plan: chunk boundaries, seed and epoch in, windows of read units and batches out; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from daskfeed.errors import InputError, MemoryBudgetError

__all__ = [
    "MAX_AUTO_READS",
    "MIX_TARGET",
    "SLOTS",
    "EpochPlan",
    "Layout",
    "PlanConfig",
    "choose_layout",
    "shard_chunks",
]

#: Windows the loader holds at once: the one being served and two being filled ahead of it.
SLOTS = 3
#: ``reads_per_chunk="auto"`` reads chunks often enough that a window draws from this many read units.
MIX_TARGET = 32
#: ``"auto"`` never reads a chunk more often than this per epoch.
MAX_AUTO_READS = 32

# Keys that keep the random streams of the plan independent of one another.
_SHARD, _ORDER, _ROWS, _WINDOW = 0, 1, 2, 3


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


@dataclass(frozen=True)
class Layout:
    """How many times each chunk is read per epoch and how many samples a window may hold."""

    reads_per_chunk: int
    window_samples: int


def _min_budget(max_chunk: int, reads: int, batch_size: int, bytes_per_sample: int) -> int:
    return SLOTS * bytes_per_sample * (math.ceil(max_chunk / reads) + batch_size)


def choose_layout(
    chunk_lengths: np.ndarray,
    *,
    bytes_per_sample: int,
    batch_size: int,
    memory_budget: int,
    reads_per_chunk: int | str,
    shuffle: bool,
    mixed: bool = False,
) -> Layout:
    """Pick the read count and the window size that fit ``memory_budget``.

    A window holds whole read units and may hold at most ``memory_budget / (SLOTS * bytes_per_sample)``
    samples. Every window but the last must hold at least ``batch_size`` samples more than its largest read
    unit, so that a batch never spans more than two windows.
    """
    lengths = np.asarray(chunk_lengths, dtype=np.int64)
    max_chunk = int(lengths.max())
    n = int(lengths.sum())
    cap = memory_budget // (SLOTS * bytes_per_sample)

    def fits(reads: int) -> bool:
        return cap >= math.ceil(max_chunk / reads) + batch_size

    def too_small(reads: int, why: str) -> MemoryBudgetError:
        need = _min_budget(max_chunk, reads, batch_size, bytes_per_sample)
        return MemoryBudgetError(
            f"memory_budget={format_bytes(memory_budget)} is too small: each of the {SLOTS} windows the "
            f"loader holds must fit one read unit (a chunk of up to {max_chunk} samples read "
            f"{reads}x = {math.ceil(max_chunk / reads)} samples) plus one batch ({batch_size} samples) at "
            f"{bytes_per_sample} bytes per sample{why}; the smallest budget that works is "
            f"{format_bytes(need)} ({need} bytes). Raise memory_budget, lower batch_size, or store "
            "smaller chunks."
        )

    if reads_per_chunk != "auto":
        reads = int(reads_per_chunk)
        if not fits(reads):
            raise too_small(reads, "")
        return Layout(reads, cap)
    if not shuffle:
        if not fits(1):
            raise too_small(1, " (shuffle=False reads every chunk once)")
        return Layout(1, cap)
    limit = max(1, min(MAX_AUTO_READS, max_chunk))
    fitting = next((r for r in range(1, limit + 1) if fits(r)), None)
    if fitting is None:
        raise too_small(limit, f" (reads_per_chunk='auto' reads a chunk at most {limit}x)")
    if mixed:  # written in a random order (daskfeed ingest --shuffle): any chunks already mix well
        return Layout(fitting, cap)
    # How many read units a window holds at one read per chunk; below MIX_TARGET, read chunks more often.
    units_per_window = cap / (n / len(lengths))
    mixing = 1 if units_per_window >= MIX_TARGET else math.ceil(MIX_TARGET / max(units_per_window, 1e-9))
    return Layout(max(fitting, min(mixing, limit)), cap)


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, eq=False)
class PlanConfig:
    """Everything the plan depends on; validated once, at the loader's construction.

    ``chunk_bounds`` are the sample offsets where chunks start, plus the total: ``[0, 1000, 2000, 2500]``.
    """

    chunk_bounds: np.ndarray
    batch_size: int
    seed: int
    shuffle: bool = True
    drop_remainder: bool = False
    reads_per_chunk: int = 1
    window_samples: int = 1 << 62
    shard: tuple[int, int] = (0, 1)
    _chunks: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bounds = np.asarray(self.chunk_bounds, dtype=np.int64)
        if bounds.ndim != 1 or len(bounds) < 2 or bounds[0] != 0 or np.any(np.diff(bounds) <= 0):
            raise InputError(f"chunk_bounds must rise strictly from 0, got {bounds.tolist()[:10]}")
        object.__setattr__(self, "chunk_bounds", bounds)
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.reads_per_chunk < 1:
            raise InputError(f"reads_per_chunk must be >= 1, got {self.reads_per_chunk}")
        if not self.shuffle and self.reads_per_chunk != 1:
            raise InputError(
                f"shuffle=False serves samples in storage order, which reads each chunk once; got "
                f"reads_per_chunk={self.reads_per_chunk}. Pass reads_per_chunk=1 or 'auto'."
            )
        object.__setattr__(self, "_chunks", shard_chunks(self))

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bounds) - 1

    @property
    def chunks(self) -> np.ndarray:
        """The chunks of this config's shard, the same every epoch."""
        return self._chunks


def shard_chunks(config: PlanConfig) -> np.ndarray:
    """Chunk indices that belong to ``config.shard``; the shards partition all chunks.

    With ``shuffle`` the chunks are dealt round-robin from a permutation drawn from the seed alone, so each
    shard holds the same chunks (and the same number of samples) every epoch; without it each shard is a
    contiguous run of chunks.
    """
    index, count = config.shard
    n_chunks = len(config.chunk_bounds) - 1
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise InputError(f"shard must be (index, count) with 0 <= index < count, got {config.shard!r}")
    if count > n_chunks:
        raise InputError(
            f"shard={config.shard!r} asks for {count} shards but the arrays have only {n_chunks} chunks "
            "on the sample axis; shards are made of whole chunks, so use at most that many."
        )
    if count == 1:
        return np.arange(n_chunks, dtype=np.int64)
    if config.shuffle:
        order = _rng(config.seed, _SHARD).permutation(n_chunks)
        return np.sort(order[index::count])
    return np.array_split(np.arange(n_chunks, dtype=np.int64), count)[index]


class EpochPlan:
    """The windows and batches of one epoch of one shard.

    The epoch is a stream of ``n_samples`` positions. Windows cut it into runs of whole read units; batch
    ``i`` is positions ``[i * batch_size, (i + 1) * batch_size)`` and may span two windows. Memory is
    O(read units); per-sample orders are drawn per window when asked for.
    """

    def __init__(self, config: PlanConfig, epoch: int):
        if epoch < 0:
            raise InputError(f"epoch must be >= 0, got {epoch}")
        self.config = config
        self.epoch = epoch
        bounds = config.chunk_bounds
        chunks = config.chunks
        reads = config.reads_per_chunk
        if config.shuffle:
            rng = _rng(config.seed, epoch, _ORDER)
            unit_chunk = np.concatenate([rng.permutation(chunks) for _ in range(reads)])
            unit_part = np.repeat(np.arange(reads, dtype=np.int64), len(chunks))
        else:
            unit_chunk = chunks.copy()
            unit_part = np.zeros(len(chunks), dtype=np.int64)
        lengths = bounds[unit_chunk + 1] - bounds[unit_chunk]
        # Part p of a chunk of length L keeps rows [p*L//r, (p+1)*L//r) of the chunk's row permutation.
        sizes = (unit_part + 1) * lengths // reads - unit_part * lengths // reads
        keep = sizes > 0
        self.unit_chunk = unit_chunk[keep]
        self.unit_part = unit_part[keep]
        self.unit_size = sizes[keep]
        unit_offsets = np.concatenate([[0], np.cumsum(self.unit_size)])
        self.n_samples = int(unit_offsets[-1])
        # Greedy packing: a window takes units while they fit in window_samples, and at least one.
        starts = [0]
        n_units = len(self.unit_size)
        while starts[-1] < n_units:
            s = starts[-1]
            stop = int(np.searchsorted(unit_offsets, unit_offsets[s] + config.window_samples, side="right")) - 1
            starts.append(min(max(stop, s + 1), n_units))
        self.window_units = np.asarray(starts, dtype=np.int64)
        self.window_offsets = unit_offsets[self.window_units]
        self.unit_offsets = unit_offsets
        bs = config.batch_size
        self.n_batches = self.n_samples // bs if config.drop_remainder else -(-self.n_samples // bs)
        #: Samples served this epoch: ``n_samples`` minus the remainder ``drop_remainder`` drops.
        self.n_served = min(self.n_samples, self.n_batches * bs)

    @property
    def n_windows(self) -> int:
        return len(self.window_units) - 1

    def units(self, window: int) -> range:
        """Indices of the read units of ``window``."""
        return range(int(self.window_units[window]), int(self.window_units[window + 1]))

    def window_size(self, window: int) -> int:
        return int(self.window_offsets[window + 1] - self.window_offsets[window])

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """The ``(start, stop)`` samples of a chunk."""
        b = self.config.chunk_bounds
        return int(b[chunk]), int(b[chunk + 1])

    def unit_rows(self, unit: int) -> np.ndarray | None:
        """Sorted chunk-local rows that read ``unit`` keeps, or None for the whole chunk."""
        reads = self.config.reads_per_chunk
        if reads == 1:
            return None
        chunk, part = int(self.unit_chunk[unit]), int(self.unit_part[unit])
        start, stop = self.chunk_range(chunk)
        length = stop - start
        # The same stream for every read of the chunk in this epoch, so the r parts are disjoint.
        perm = _rng(self.config.seed, self.epoch, _ROWS, chunk).permutation(length)
        return np.sort(perm[part * length // reads : (part + 1) * length // reads])

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
        first = int(np.searchsorted(self.window_offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.window_offsets, stop - 1, side="right")) - 1
        return range(first, last + 1)

    def batches_of(self, window: int) -> range:
        """The batches that take at least one sample of ``window`` (empty if all of it is dropped)."""
        bs = self.config.batch_size
        start = int(self.window_offsets[window])
        stop = min(int(self.window_offsets[window + 1]), self.n_served)
        if start >= stop:
            return range(0)
        return range(start // bs, (stop - 1) // bs + 1)

    def samples(self, window: int) -> np.ndarray:
        """Global sample indices of a window, in serving order (for tests and inspection; O(window))."""
        parts = []
        for u in self.units(window):
            start, _ = self.chunk_range(int(self.unit_chunk[u]))
            rows = self.unit_rows(u)
            parts.append(start + (np.arange(int(self.unit_size[u])) if rows is None else rows))
        flat = np.concatenate(parts)
        order = self.window_order(window)
        return flat if order is None else flat[order]

"""The read layout: which chunks are the read units, which arrays are held whole, reads per chunk, window size."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.utils import format_bytes

from daskfeed.errors import MemoryBudgetError
from daskfeed.mixing import MIXED_GROUPING
from daskfeed.options import LoaderOptions
from daskfeed.plan import FIRST_WINDOW_CHUNKS, PlanConfig, shard_chunks
from daskfeed.samples import Geometry, RowMap, SampleUnits

__all__ = [
    "DECODE_SHARE",
    "HEADS_FRACTION",
    "HELD_FRACTION",
    "MAX_AUTO_READS",
    "MEMORY_CHUNK_BYTES",
    "MIX_TARGET",
    "SLOTS",
    "WARN_AMPLIFICATION",
    "ArraySpec",
    "DecodeLimit",
    "Layout",
    "choose_layout",
    "decode_limit",
]

#: Windows the loader holds at once: the one being served and two being filled ahead of it.
SLOTS = 3
#: ``reads_per_chunk="auto"`` reads chunks often enough that a window draws from this many places of the array.
MIX_TARGET = 32
#: ``"auto"`` never reads a chunk more often than this per epoch.
MAX_AUTO_READS = 32
#: Arrays small beside the budget (labels, weights), up to this share of it together, are read once and held whole.
HELD_FRACTION = 0.05
#: The rows windows of a series reach into the next chunk ("heads") are read once and held when they take up to
#: this share of the budget; above it, a read unit reads those rows from the next chunk, decoding it again.
HEADS_FRACTION = 0.25
#: Read units for inputs that are all in memory (numpy): about this many bytes each, for ``shard=``.
MEMORY_CHUNK_BYTES = 4 * 2**20
#: Bytes of one entry of a serving order (a window's index arrays).
INDEX_BYTES = np.dtype(np.intp).itemsize
#: Chunks being decoded may take up to this share of the budget on top of it (always one chunk at least).
DECODE_SHARE = 0.25
#: A chunk being decoded holds its decoded bytes and, until then, its stored bytes: at most about twice.
DECODE_COPIES = 2
_WRITTEN_SHUFFLED = "the store was written in random order (daskfeed ingest --shuffle): one read mixes"
#: Above this decode amplification a loader warns (and ``daskfeed info`` too), saying what fixes it.
WARN_AMPLIFICATION = 2.0


@dataclass(frozen=True, eq=False)
class ArraySpec:
    """What the layout needs to know of one array: its name, its row size, its chunks on the sample axis."""

    name: str
    bytes_per_sample: int
    #: Offsets where chunks start plus the total, for lazy arrays; None for arrays already in memory.
    bounds: np.ndarray | None

    @property
    def n_samples(self) -> int:
        return int(self.bounds[-1]) if self.bounds is not None else 0

    @property
    def nbytes(self) -> int:
        return self.n_samples * self.bytes_per_sample


@dataclass(frozen=True, eq=False)
class Layout:
    """How a loader reads its arrays; decided once, from chunk boundaries and the budget.

    ``resident`` layouts hold every lazy array in memory: each chunk is decoded once, all of them together
    before the first batch, and every epoch is one window, a full shuffle. Otherwise the arrays in
    ``windowed`` are decoded window by window, every epoch.
    """

    #: The array whose chunks are the read units (the one that costs the most to decode); None when all are numpy.
    unit_array: str | None
    #: Where the read units start, plus the total.
    chunk_bounds: np.ndarray
    #: The read units this shard serves, the same every epoch.
    shard_chunks: np.ndarray
    #: Lazy arrays read once, whole, and held (small ones: labels, weights).
    held: tuple[str, ...]
    #: Lazy arrays read unit by unit: window by window, or into memory once when ``resident``.
    windowed: tuple[str, ...]
    resident: bool
    reads_per_chunk: int
    window_samples: int
    #: Bytes of the arrays held whole, and for resident layouts of the windowed arrays too.
    held_bytes: int
    #: Bytes decoded per epoch once the first epoch is done, and bytes of lazy arrays served per epoch.
    decoded_per_epoch: int
    served_per_epoch: int
    #: Why ``reads_per_chunk`` is what it is, in a sentence.
    reason: str
    #: Samples cut by ``window=`` (None: one sample per row): what a sample is, the units' rows, and whether the
    #: rows a unit's last samples reach into the next chunk ("heads") are held (else read with the unit).
    geometry: Geometry | None = None
    sample_units: SampleUnits | None = None
    heads: bool = False
    heads_bytes: int = 0
    #: Raw rows a window holds at most (samples cut by ``window=``).
    window_rows: int = 0
    #: The grouping of the labels (:func:`daskfeed.mixing.label_grouping`, by name) that ``reads_per_chunk="auto"``
    #: measured at the read units to decide; empty when it did not need to (or could not) measure.
    label_grouping: Mapping[str, float] = field(default_factory=dict)

    @property
    def labels_mixed(self) -> bool:
        """Whether labels were measured and all are mixed already (grouping at most
        :data:`daskfeed.mixing.MIXED_GROUPING`)."""
        return bool(self.label_grouping) and max(self.label_grouping.values()) <= MIXED_GROUPING

    @property
    def n_units(self) -> int:
        """Read units of this shard."""
        return len(self.shard_chunks)

    @property
    def amplification(self) -> float:
        """Bytes decoded per epoch over bytes served (after the first epoch; 0 when all is held in memory)."""
        return self.decoded_per_epoch / self.served_per_epoch if self.served_per_epoch else 0.0

    def describe(self) -> str:
        """One line: units, reads, residency and amplification, as ``repr`` and ``daskfeed info`` show them."""
        units = f"{self.n_units} read units" + (f" (chunks of {self.unit_array})" if self.unit_array else "")
        held = f", {', '.join(self.held)} held whole" if self.held else ""
        if self.geometry is not None:
            units = f"{self.geometry.describe()}; {units}"
            if self.heads:
                held += f", heads of the next chunks held ({format_bytes(self.heads_bytes)})"
        if self.resident:
            return f"{units}{held}; all fits the budget: decoded once, then full shuffles in memory"
        size = f"{self.window_rows} rows" if self.geometry is not None else f"{self.window_samples} samples"
        return (
            f"{units}{held}; reads_per_chunk={self.reads_per_chunk}, window<={size}, "
            f"decode amplification {self.amplification:.2f}x"
        )

    def plan_config(self, options: LoaderOptions, subset: Any = None) -> PlanConfig:
        """The plan these reads follow, for the seed, batch size and shard of ``options`` (and the samples of a
        part of :func:`daskfeed.split`, given its ``subset``)."""
        return PlanConfig(
            subset=subset,
            chunk_bounds=self.chunk_bounds,
            batch_size=options.batch_size,
            seed=options.seed,
            shuffle=options.shuffle,
            drop_remainder=options.drop_remainder,
            reads_per_chunk=self.reads_per_chunk,
            window_samples=self.window_samples,
            shard=options.shard.as_tuple(),
            shard_chunks=self.shard_chunks,
            resident=self.resident,
            progressive=self.serves_while_decoding(options),
            **self._rows(),
        )

    def serves_while_decoding(self, options: LoaderOptions) -> bool:
        """Whether the first epoch is served while the data is decoded (resident, shuffled, one sample per row,
        at least twice :data:`daskfeed.plan.FIRST_WINDOW_CHUNKS` chunks): see :class:`daskfeed.plan.EpochPlan`."""
        return (
            self.resident
            and self.geometry is None
            and options.shuffle
            and len(self.shard_chunks) >= 2 * FIRST_WINDOW_CHUNKS
        )

    def _rows(self) -> dict[str, Any]:
        """The plan's knobs for windows of raw rows (samples cut by ``window=``)."""
        if self.sample_units is None:
            return {}
        u = self.sample_units
        return dict(segment_rows=u.hi - u.lo, sample_rows=self.geometry.length, window_rows=self.window_rows)


def _memory_bounds(n: int, bytes_per_sample: int) -> np.ndarray:
    step = max(1, min(n, MEMORY_CHUNK_BYTES // max(1, bytes_per_sample)))
    return np.unique(np.append(np.arange(0, n, step, dtype=np.int64), n))


def _overlap_bytes(spec: ArraySpec, bounds: np.ndarray, chunks: np.ndarray) -> int:
    """Bytes of ``spec``'s chunks decoded to read each of ``chunks`` (read units) once."""
    own = spec.bounds
    starts, stops = bounds[chunks], bounds[chunks + 1]
    first = np.searchsorted(own, starts, side="right") - 1
    last = np.searchsorted(own, stops - 1, side="right") - 1
    return int((own[last + 1] - own[first]).sum()) * spec.bytes_per_sample


@dataclass(frozen=True)
class _Setting:
    """What does not depend on the budget: units, the shard's chunks, the arrays by role."""

    arrays: tuple[ArraySpec, ...]
    unit: ArraySpec | None
    bounds: np.ndarray
    chunks: np.ndarray
    lengths: np.ndarray
    others: tuple[ArraySpec, ...]  # lazy arrays besides the unit array, smallest first
    in_memory: bool  # some array is numpy (served by global index, never decoded)

    @property
    def n_shard(self) -> int:
        return int(self.lengths.sum())

    @property
    def max_len(self) -> int:
        return int(self.lengths.max())


def _setting(arrays: Sequence[Any], n: int, options: LoaderOptions) -> _Setting:
    arrays = [ArraySpec(a.name, int(a.bytes_per_sample), a.bounds) for a in arrays]
    lazy = [a for a in arrays if a.bounds is not None]
    if lazy:
        unit = max(lazy, key=lambda a: (a.nbytes, -lazy.index(a)))  # the first of the heaviest
        bounds = np.asarray(unit.bounds, dtype=np.int64)
    else:
        unit, bounds = None, _memory_bounds(n, sum(a.bytes_per_sample for a in arrays))
    chunks = shard_chunks(len(bounds) - 1, options.shard.as_tuple(), options.seed, options.shuffle)
    others = tuple(sorted((a for a in lazy if a is not unit), key=lambda a: a.nbytes))
    return _Setting(
        arrays=tuple(arrays),
        unit=unit,
        bounds=bounds,
        chunks=chunks,
        lengths=np.diff(bounds)[chunks],
        others=others,
        in_memory=len(lazy) < len(arrays),
    )


def choose_layout(
    arrays: Sequence[Any],
    n_samples: int,
    options: LoaderOptions,
    *,
    mixed: bool | str = False,
    geometry: Geometry | None = None,
    labels: Callable[[np.ndarray], Mapping[str, float]] | None = None,
) -> Layout:
    """Decide how to read ``arrays`` within ``options.memory_budget``.

    ``arrays`` are :class:`ArraySpec` or anything with the same three attributes (a loader's leaves);
    ``n_samples`` is the length of axis 0. ``geometry`` cuts samples out of rows (``window=``, see
    :mod:`daskfeed.samples`): windows then hold raw rows, counted as such in the budget.

    The read units are the chunks of the array that costs the most to decode; other lazy arrays are read per
    unit (their chunks clipped to it, never merged into fewer units). Lazy arrays that are small beside the
    budget are read once and held whole. When everything fits, the layout is ``resident``. ``mixed`` says the
    arrays were written in random order (``daskfeed ingest --shuffle``), so one read per chunk mixes.

    Raises
    ------
    MemoryBudgetError
        When no layout fits; the message gives the smallest budget that works.
    """
    setting = _setting(arrays, n_samples, options)
    if geometry is not None:
        return _choose_samples(setting, geometry, options, mixed)
    layout = _decide(setting, options, options.memory_budget, mixed)
    if layout is None:
        raise _too_small(setting, options, mixed)
    if labels is not None and not mixed and options.reads_per_chunk == "auto" and options.shuffle:
        return _measured(setting, options, layout, labels)
    return layout


def _measured(s: _Setting, options: LoaderOptions, layout: Layout, labels: Callable) -> Layout:
    """``layout``, or the layout of a store in random order when the labels are mixed already; with the grouping
    measured, when it was worth measuring (streaming that reads chunks more than once to mix, or decodes much)."""
    if layout.resident:
        return layout
    once = _decide(s, options, options.memory_budget, True)
    if once is None or (once.reads_per_chunk >= layout.reads_per_chunk and layout.amplification <= WARN_AMPLIFICATION):
        return layout  # nothing the labels could change, or say
    measured = dict(labels(layout.chunk_bounds))
    if not measured:
        return layout
    if max(measured.values()) > MIXED_GROUPING:
        return dataclasses.replace(layout, label_grouping=measured)
    said = ", ".join(f"{name} {value:.2f}" for name, value in measured.items())
    why = f"the labels are mixed already (grouping {said}; 0 is a random order): one read mixes"
    return dataclasses.replace(_decide(s, options, options.memory_budget, why), label_grouping=measured)


def _decide(s: _Setting, options: LoaderOptions, budget: int, mixed: bool | str) -> Layout | None:
    held: list[ArraySpec] = []
    for spec in s.others:  # smallest first, while they stay a small share of the budget together
        if sum(a.nbytes for a in held) + spec.nbytes > HELD_FRACTION * budget:
            break
        held.append(spec)
    windowed = [a for a in s.arrays if a.bounds is not None and a not in held]
    held_bytes = sum(a.nbytes for a in held)
    resident_bytes = held_bytes + s.n_shard * (sum(a.bytes_per_sample for a in windowed) + 2 * INDEX_BYTES * SLOTS)
    if resident_bytes <= budget:
        return _resident(s, options, held, windowed, resident_bytes)
    # Stream. Holding the small arrays leaves less for windows; if that does not fit, stream them too.
    for keep in (held, []):
        layout = _streaming(s, options, budget, keep, mixed)
        if layout is not None:
            return layout
    return None


def _layout(
    s: _Setting,
    held: list[ArraySpec],
    windowed: list[ArraySpec],
    *,
    bounds: np.ndarray | None = None,
    chunks: np.ndarray | None = None,
    served_rows: int | None = None,
    **decided: Any,
) -> Layout:
    """The :class:`Layout` of setting ``s``: its chunks as read units, or ``bounds`` / ``chunks`` (samples cut by
    ``window=``), serving ``served_rows`` rows of every array per epoch (the shard's samples by default)."""
    return Layout(
        unit_array=s.unit.name if s.unit else None,
        chunk_bounds=s.bounds if bounds is None else bounds,
        shard_chunks=s.chunks if chunks is None else chunks,
        held=tuple(a.name for a in held),
        windowed=tuple(a.name for a in windowed),
        served_per_epoch=(s.n_shard if served_rows is None else served_rows)
        * sum(a.bytes_per_sample for a in (*held, *windowed)),
        **decided,
    )


def _resident(s: _Setting, options: LoaderOptions, held, windowed, resident_bytes: int) -> Layout:
    return _layout(
        s,
        held,
        windowed,
        resident=True,
        reads_per_chunk=1,
        window_samples=s.n_shard,
        held_bytes=resident_bytes,
        decoded_per_epoch=0,
        reason="the data fits the memory budget: each chunk is decoded once, then every epoch is a full shuffle",
    )


def _window_bytes(s: _Setting, options: LoaderOptions, windowed, held) -> int:
    """Bytes one sample takes in a window: its windowed rows, its place in the serving order, its global index."""
    index = INDEX_BYTES * (int(options.shuffle) + int(bool(held) or s.in_memory))
    return max(1, sum(a.bytes_per_sample for a in windowed) + index)


def _streaming(s: _Setting, options: LoaderOptions, budget: int, held, mixed: bool | str) -> Layout | None:
    windowed = [a for a in s.arrays if a.bounds is not None and a not in held]
    cap = (budget - sum(a.nbytes for a in held)) // (SLOTS * _window_bytes(s, options, windowed, held))
    reads, reason = _reads(s, options, cap, mixed)
    if reads is None:
        return None
    return _layout(
        s,
        held,
        windowed,
        resident=False,
        reads_per_chunk=reads,
        window_samples=int(cap),
        held_bytes=sum(a.nbytes for a in held),
        decoded_per_epoch=reads * sum(_overlap_bytes(a, s.bounds, s.chunks) for a in windowed),
        reason=reason,
    )


def _reads(s: _Setting, options: LoaderOptions, cap: int, mixed: bool | str) -> tuple[int | None, str]:
    """Reads per chunk for windows of ``cap`` samples, or None when a window cannot hold a read unit."""

    def fits(reads: int) -> bool:
        return cap >= math.ceil(s.max_len / reads) + options.batch_size

    if options.reads_per_chunk != "auto":
        reads = int(options.reads_per_chunk)
        return (reads, "reads_per_chunk was given") if fits(reads) else (None, "")
    if not options.shuffle:
        return (1, "shuffle=False reads every chunk once") if fits(1) else (None, "")
    limit = max(1, min(MAX_AUTO_READS, s.max_len))
    fitting = next((r for r in range(1, limit + 1) if fits(r)), None)
    if fitting is None:
        return None, ""
    forced = f"a read unit of {s.max_len} samples is larger than a window of {cap}" if fitting > 1 else ""
    if mixed:
        return fitting, forced or (mixed if isinstance(mixed, str) else _WRITTEN_SHUFFLED)
    # Mixing comes from how many places of the array a window draws from: aim for MIX_TARGET of them, or
    # every read unit when there are fewer; more reads than that decode more without mixing more.
    per_window = cap / float(s.lengths.mean())
    places = min(MIX_TARGET, len(s.lengths))
    mixing = min(limit, max(1, math.ceil(places / per_window)))
    if mixing <= fitting:
        return fitting, forced or f"a window holds {per_window:.0f} read units: one read per chunk mixes"
    return mixing, (
        f"a window holds {per_window:.1f} of {len(s.lengths)} read units; reading each chunk {mixing}x lets it "
        f"draw from about {places} places of the array"
    )


def _too_small(s: _Setting, options: LoaderOptions, mixed: bool | str) -> MemoryBudgetError:
    budget = options.memory_budget
    reads = MAX_AUTO_READS if options.reads_per_chunk == "auto" and options.shuffle else options.reads_per_chunk
    reads = max(1, min(1 if reads == "auto" else int(reads), s.max_len))
    part = math.ceil(s.max_len / reads)
    windowed = [a for a in s.arrays if a.bounds is not None]
    per_sample = _window_bytes(s, options, windowed, [])
    works = SLOTS * per_sample * (part + options.batch_size)  # streaming every array: always a layout
    lo = 1
    while lo < works:  # the smallest that works: holding small arrays or all the data may take less
        mid = (lo + works) // 2
        if _decide(s, options, mid, mixed) is not None:
            works = mid
        else:
            lo = mid + 1
    unit = f"a chunk of up to {s.max_len} samples" + (f" of {s.unit.name}" if s.unit else "")
    return MemoryBudgetError(
        f"memory_budget={format_bytes(budget)} is too small: each of the {SLOTS} windows the loader holds must "
        f"fit one read unit ({unit} read {reads}x = {part} samples) plus one batch ({options.batch_size} samples) "
        f"at {per_sample} bytes per sample; the smallest budget that works is {format_bytes(works)} ({works} "
        "bytes). Raise memory_budget, lower batch_size, or store smaller chunks.",
        smallest=works,
    )


# -- samples cut by window= ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Samples:
    """What does not depend on the budget, for samples cut by ``window=``: the units and the shard's share."""

    s: _Setting
    g: Geometry
    u: SampleUnits
    chunks: np.ndarray  # the shard's read units (indices into u)
    m: np.ndarray  # samples of each of them
    seg: np.ndarray  # rows their samples span

    def rows_held(self, reads: int) -> np.ndarray:
        """Rows a read of each unit holds at most (as :class:`daskfeed.plan.EpochPlan` packs them)."""
        return np.minimum(self.seg, -(-self.m // reads) * self.g.length)

    def batch_rows(self, batch_size: int) -> int:
        """Room a window keeps beside its largest read unit: a row per sample of a batch (windows that hold more
        rows than that serve more batches each; a batch may span several windows)."""
        return -(-batch_size // self.g.n_patches)

    def index_bytes(self, held: list[ArraySpec], windowed: list[ArraySpec]) -> int:
        """Bytes of a window's index arrays per sample: start rows in its buffers, in arrays held whole, patches."""
        whole = bool(held) or self.s.in_memory
        return INDEX_BYTES * (int(bool(windowed)) + int(whole) + int(self.g.n_patches > 1))


def _choose_samples(s: _Setting, g: Geometry, options: LoaderOptions, mixed: bool) -> Layout:
    u = g.units(s.bounds)
    chunks = shard_chunks(len(u.sample_bounds) - 1, options.shard.as_tuple(), options.seed, options.shuffle)
    ss = _Samples(s, g, u, chunks, np.diff(u.sample_bounds)[chunks], (u.hi - u.lo)[chunks])
    layout = _decide_samples(ss, options, options.memory_budget, mixed)
    if layout is not None:
        return layout
    raise _too_small_samples(ss, options, mixed)


def _range_bytes(spec: ArraySpec, starts: np.ndarray, stops: np.ndarray) -> int:
    """Bytes of ``spec``'s chunks decoded to read rows ``[starts, stops)``, each range once."""
    own = spec.bounds
    first = np.searchsorted(own, starts, side="right") - 1
    last = np.searchsorted(own, stops - 1, side="right") - 1
    return int((own[last + 1] - own[first]).sum()) * spec.bytes_per_sample


def _decide_samples(ss: _Samples, options: LoaderOptions, budget: int, mixed: bool) -> Layout | None:
    s, u = ss.s, ss.u
    held: list[ArraySpec] = []
    for spec in s.others:
        if sum(a.nbytes for a in held) + spec.nbytes > HELD_FRACTION * budget:
            break
        held.append(spec)
    windowed = [a for a in s.arrays if a.bounds is not None and a not in held]
    held_bytes = sum(a.nbytes for a in held)
    rows = RowMap.of(u.lo[ss.chunks], u.hi[ss.chunks]).rows
    index = ss.index_bytes(held, windowed)
    resident_bytes = held_bytes + rows * sum(a.bytes_per_sample for a in windowed) + int(ss.m.sum()) * index * SLOTS
    if resident_bytes <= budget:
        return _samples_layout(
            ss,
            held,
            windowed,
            resident=True,
            reads_per_chunk=1,
            window_samples=int(ss.m.sum()),
            window_rows=rows,
            held_bytes=resident_bytes,
            decoded_per_epoch=0,
            reason="the data fits the memory budget: each chunk is decoded once, then every epoch is a full shuffle",
        )
    # Stream. Holding the heads and the small arrays leaves less for windows; if that does not fit, do without.
    for heads in (True, False) if ss.g.length > 1 else (False,):
        for keep in (held, []) if held else ([],):
            layout = _streaming_samples(ss, options, budget, keep, heads, mixed)
            if layout is not None:
                return layout
    return None


def _samples_layout(ss: _Samples, held: list[ArraySpec], windowed: list[ArraySpec], **decided: Any) -> Layout:
    u = ss.u
    rows = RowMap.of(u.lo[ss.chunks], u.hi[ss.chunks]).rows
    return _layout(
        ss.s,
        held,
        windowed,
        bounds=u.sample_bounds,
        chunks=ss.chunks,
        served_rows=rows,
        geometry=ss.g,
        sample_units=u,
        **decided,
    )


def _streaming_samples(
    ss: _Samples, options: LoaderOptions, budget: int, held: list[ArraySpec], heads: bool, mixed: bool
) -> Layout | None:
    u, chunks = ss.u, ss.chunks
    windowed = [a for a in ss.s.arrays if a.bounds is not None and a not in held]
    row_bytes = sum(a.bytes_per_sample for a in windowed)
    own = np.minimum(u.own_stop(chunks), u.hi[chunks])
    heads_bytes = RowMap.of(own, u.hi[chunks]).rows * row_bytes if heads else 0
    if heads_bytes > HEADS_FRACTION * budget:
        return None
    per_row = max(1, row_bytes + ss.g.n_patches * ss.index_bytes(held, windowed))
    cap = (budget - sum(a.nbytes for a in held) - heads_bytes) // (SLOTS * per_row)
    reads, reason = _reads_samples(ss, options, cap, mixed)
    if reads is None:
        return None
    stops = own if heads else u.hi[chunks]
    return _samples_layout(
        ss,
        held,
        windowed,
        resident=False,
        reads_per_chunk=reads,
        window_samples=int(cap * ss.m.sum() // max(1, int(ss.rows_held(reads).sum()))),  # about, at full windows
        window_rows=int(cap),
        held_bytes=sum(a.nbytes for a in held) + heads_bytes,
        decoded_per_epoch=reads * sum(_range_bytes(a, u.lo[chunks], stops) for a in windowed),
        heads=bool(heads_bytes),
        heads_bytes=int(heads_bytes),
        reason=reason,
    )


def _reads_samples(ss: _Samples, options: LoaderOptions, cap: int, mixed: bool) -> tuple[int | None, str]:
    """As :func:`_reads`, for windows of raw rows: a read of a unit holds the rows its samples span."""
    batch_rows = ss.batch_rows(options.batch_size)

    def fits(reads: int) -> bool:
        return cap >= int(ss.rows_held(reads).max()) + batch_rows

    if options.reads_per_chunk != "auto":
        reads = int(options.reads_per_chunk)
        return (reads, "reads_per_chunk was given") if fits(reads) else (None, "")
    if not options.shuffle:
        return (1, "shuffle=False reads every chunk once") if fits(1) else (None, "")
    limit = max(1, min(MAX_AUTO_READS, int(ss.m.max())))
    fitting = next((r for r in range(1, limit + 1) if fits(r)), None)
    if fitting is None:
        return None, ""
    forced = ""
    if fitting > 1:
        forced = f"the rows of a read unit ({int(ss.rows_held(1).max())}) do not fit a window of {cap}"
    if mixed:
        return fitting, forced or _WRITTEN_SHUFFLED
    # A read that keeps 1/r of a unit's samples holds only the rows they span: with windows that overlap, nearly
    # all of them, so more reads would decode more without mixing more. Take the fewest reads that reach the
    # most places a window can draw from (up to MIX_TARGET).
    # A read whose rows do not shrink with it (long windows, few samples per chunk) decodes more for little more
    # mixing: stop where a read more would buy less than half the places it would with one row per sample.
    places = min(MIX_TARGET, len(ss.m))
    first = cap / float(ss.rows_held(fitting).mean())
    best, most = fitting, first
    for r in range(fitting, limit + 1):
        per_window = cap / float(ss.rows_held(r).mean())
        if per_window < 0.5 * first * r / fitting:
            break
        if per_window > most * 1.05:
            best, most = r, per_window
        if most >= places:
            break
    if best == fitting:
        return fitting, forced or f"a window holds {most:.0f} read units: one read per chunk mixes as much as more"
    return best, (
        f"a window holds {most:.1f} of {len(ss.m)} read units; reading each chunk {best}x (each read holding only "
        "the rows its samples span) lets it draw from more places of the array"
    )


def _too_small_samples(ss: _Samples, options: LoaderOptions, mixed: bool) -> MemoryBudgetError:
    budget = options.memory_budget
    reads = MAX_AUTO_READS if options.reads_per_chunk == "auto" and options.shuffle else options.reads_per_chunk
    reads = max(1, min(1 if reads == "auto" else int(reads), int(ss.m.max())))
    windowed = [a for a in ss.s.arrays if a.bounds is not None]
    per_row = max(1, sum(a.bytes_per_sample for a in windowed) + ss.g.n_patches * ss.index_bytes([], windowed))
    rows = int(ss.rows_held(reads).max())
    batch_rows = ss.batch_rows(options.batch_size)
    works = SLOTS * per_row * (rows + batch_rows)  # streaming every array, no heads held: always a layout
    lo = 1
    while lo < works:
        mid = (lo + works) // 2
        if _decide_samples(ss, options, mid, mixed) is not None:
            works = mid
        else:
            lo = mid + 1
    unit = f" of {ss.s.unit.name}" if ss.s.unit else ""
    return MemoryBudgetError(
        f"memory_budget={format_bytes(budget)} is too small: each of the {SLOTS} windows the loader holds must "
        f"fit one read unit (the {rows} rows that the samples starting in a chunk{unit} span, read {reads}x) plus "
        f"room for a batch ({batch_rows} rows) at {per_row} bytes per row; the "
        f"smallest budget that works is {format_bytes(works)} ({works} bytes). Raise memory_budget, lower "
        "batch_size, or store smaller chunks.",
        smallest=works,
    )


@dataclass(frozen=True)
class DecodeLimit:
    """How many chunks a loader decodes at once, so that chunks being decoded stay within :data:`DECODE_SHARE`
    of the budget, on top of it: the decoded data the loader holds is bounded by the budget, and this bounds
    the rest."""

    #: The array whose chunks decode to the most bytes, and that size.
    array: str | None
    chunk_bytes: int
    #: Chunks decoded at once (reading threads), and chunk requests in flight to a store that is not local.
    threads: int
    in_flight: int
    budget: int

    @property
    def transient_bytes(self) -> int:
        """The most that chunks being decoded take at once, beyond the budget."""
        return DECODE_COPIES * self.chunk_bytes * self.threads

    @property
    def smallest_budget(self) -> int:
        """The budget that holds one chunk being decoded within its share."""
        return math.ceil(DECODE_COPIES * self.chunk_bytes / DECODE_SHARE)

    def warning(self) -> str | None:
        """A sentence when even one chunk being decoded takes more than its share of the budget, else None."""
        if self.transient_bytes <= DECODE_SHARE * self.budget:
            return None
        return (
            f"one chunk of {self.array} decodes to {format_bytes(self.chunk_bytes)}, and while it is decoded it "
            f"takes up to {format_bytes(DECODE_COPIES * self.chunk_bytes)} (its stored bytes too): at "
            f"memory_budget={format_bytes(self.budget)} the loader decodes one chunk at a time and still uses up to "
            f"{format_bytes(self.transient_bytes)} beyond the budget for it. A budget of "
            f"{format_bytes(self.smallest_budget)} or more keeps chunks being decoded within a quarter of it; or "
            "store smaller chunks."
        )


def decode_limit(chunks: Sequence[tuple[str, int]], budget: int, cores: int, concurrency: int) -> DecodeLimit:
    """The :class:`DecodeLimit` for arrays whose largest chunks decode to ``chunks`` ``(name, bytes)``: one
    chunk per core, fewer where they would take more than :data:`DECODE_SHARE` of ``budget``, one at least;
    requests in flight (``concurrency``) likewise, never fewer than the threads."""
    name, size = max(chunks, key=lambda c: c[1], default=(None, 0))
    fit = int(DECODE_SHARE * budget) // max(1, DECODE_COPIES * size)
    threads = max(1, min(cores, fit))
    return DecodeLimit(name, int(size), threads, max(threads, min(concurrency, fit)), budget)

"""Making windows: the rows a window serves, read into its buffers or taken from arrays held in memory."""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskfeed.errors import DaskfeedError
from daskfeed.inputs import Inputs, zarr_behind
from daskfeed.integrity import StoreWatch
from daskfeed.layout import Layout
from daskfeed.plan import EpochPlan
from daskfeed.read import BlockSource, GraphRunner, ReadJob, Rows, read
from daskfeed.samples import Gather, RowMap, hold
from daskfeed.tools.progress import first_decode

__all__ = ["SampleWindowMaker", "Stages", "Window", "WindowMaker", "decoded_at_once", "window_maker"]

_decode_ids = itertools.count()
#: A window waiting for the load checks this often whether the loader was closed.
WAIT_SLICE_S = 0.1


@dataclass(eq=False)
class Window:
    """A window ready to serve: per leaf, the array to take rows from and those rows in serving order.

    For an array read window by window the array is the window's own buffer (a view of ``storage``, which
    may be larger: the storage of a window that was let go is used again, since writing into fresh memory
    costs page faults); for an array held in memory it is that array. A take is a slice, an index array, or
    for samples cut by ``window=`` a :class:`daskfeed.samples.Gather`.
    """

    index: int
    storage: list[np.ndarray]
    arrays: list[np.ndarray]
    takes: list[np.ndarray | slice | Gather]
    #: Bytes this window owns (its storage and its index arrays), bytes decoded to make it, seconds it took.
    nbytes: int
    decoded: int
    seconds: float


def storage_rows(storage: list[np.ndarray]) -> int:
    return len(storage[0]) if storage else 0


class Stages:
    """The loader's one load of what it holds in memory, run stage by stage on a thread of its own
    (``daskfeed-decode-N``), while the windows that need only the first stages are served.

    Each stage is a call that reads some chunks and returns the bytes it decoded. :meth:`wait` blocks until a
    stage and those before it are in, and gives the bytes of those stages not counted yet (each stage's
    bytes are counted once). A failure reaches every thread that waits for that stage or a later one; the
    window maker then starts a new load when asked again. The thread ends with the last stage, a failure,
    or the loader's close.
    """

    def __init__(self, stages: list[Callable[[], int]], closed: threading.Event, note: Any, by_window: bool):
        #: Whether stage ``w`` is what window ``w`` of epoch 0's plan serves (else one stage, or all of them).
        self.by_window = by_window
        self.last = len(stages) - 1
        self._cond = threading.Condition()
        self._closed = closed
        self._done = 0
        self._bytes = [0] * len(stages)
        self._counted = 0
        self.error: BaseException | None = None
        thread = threading.Thread(
            target=self._run, args=(stages, note), name=f"daskfeed-decode-{next(_decode_ids)}", daemon=True
        )
        thread.start()

    def _run(self, stages: list[Callable[[], int]], note: Any) -> None:
        try:
            with note:
                for stage, load in enumerate(stages):
                    if self._closed.is_set():
                        raise DaskfeedError("the loader was closed while its data was being decoded")
                    decoded = load()
                    with self._cond:
                        self._bytes[stage], self._done = decoded, stage + 1
                        self._cond.notify_all()
        except BaseException as err:  # reaches the threads that wait for this stage
            with self._cond:
                self.error = err
                self._cond.notify_all()

    def wait(self, stage: int) -> int:
        """Block until stages ``0`` to ``stage`` are in; the bytes they decoded that were not counted yet."""
        with self._cond:
            while self._done <= stage and self.error is None:
                if self._closed.is_set():
                    raise DaskfeedError("the loader was closed while its data was being decoded")
                self._cond.wait(WAIT_SLICE_S)
            if self._done <= stage:
                raise self.error
            decoded = sum(self._bytes[self._counted : stage + 1])
            self._counted = max(self._counted, stage + 1)
            return decoded


class WindowMaker:
    """Turns ``(plan, window)`` into a :class:`Window`, following the loader's :class:`Layout`.

    Leaves fall in three kinds: numpy arrays (served by global sample index), lazy arrays held in memory
    (small ones read whole on first use; with a resident layout the others too, this shard's chunks of
    them), and lazy arrays read into each window's own buffers.
    """

    def __init__(self, inputs: Inputs, layout: Layout, scheduler: GraphRunner, watch: StoreWatch | None = None):
        self.inputs, self.layout, self.scheduler, self.watch = inputs, layout, scheduler, watch
        leaves = inputs.leaves
        self._held = [i for i, leaf in enumerate(leaves) if leaf.name in layout.held]
        self._windowed = [i for i, leaf in enumerate(leaves) if leaf.name in layout.windowed]
        #: Leaves served by global sample index: numpy arrays and small arrays held whole.
        self._whole = [i for i, leaf in enumerate(leaves) if not leaf.lazy] + self._held
        self._stages: Stages | None = None
        self._stages_lock = threading.Lock()  # held while the load starts, which takes self._lock itself
        self._lock = threading.Lock()
        self._sources: dict[int, BlockSource] = {}
        self._memory: dict[int, np.ndarray] = {i: leaf.array for i, leaf in enumerate(leaves) if not leaf.lazy}
        bounds = layout.chunk_bounds
        #: Whether a resident array's rows are the global sample indices (no shard, or one of all chunks).
        self._global_base = not (layout.resident and len(layout.shard_chunks) < len(bounds) - 1)
        self._base = bounds[:-1]
        if not self._global_base:  # resident arrays hold this shard's chunks, end to end in storage order
            lengths = np.diff(bounds)[layout.shard_chunks]
            self._base = np.zeros(len(bounds) - 1, np.int64)
            self._base[layout.shard_chunks] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        #: Bytes of arrays held in memory (small arrays read whole, resident arrays), once allocated.
        self.held_nbytes = 0

    def _source(self, i: int) -> BlockSource:
        with self._lock:  # the task graph is materialized once, on first use
            if i not in self._sources:
                self._sources[i] = BlockSource(self.inputs.leaves[i].array)
            return self._sources[i]

    def _allocate(self, i: int, rows: int) -> np.ndarray:
        with self._lock:
            if i not in self._memory:
                leaf = self.inputs.leaves[i]
                self._memory[i] = np.empty((rows, *leaf.sample_shape), leaf.dtype)
                self.held_nbytes += self._memory[i].nbytes
            return self._memory[i]

    def make(self, plan: EpochPlan, window: int, storage: list[np.ndarray] | None) -> Window:
        started = time.perf_counter()
        decoded = self._load(plan, window)
        order = plan.window_order(window)
        arrays: list[Any] = [None] * len(self.inputs.leaves)
        takes: list[Any] = [None] * len(self.inputs.leaves)
        owned: list[Any] = []  # index arrays this window holds
        ids = None
        if self._whole:  # by global sample index
            ids = _contiguous(plan.rows(window, plan.config.chunk_bounds[:-1], order))
            owned.append(ids)
            for i in self._whole:
                arrays[i], takes[i] = self._memory[i], ids
        if self.layout.resident:
            rows = ids if self._global_base and ids is not None else _contiguous(plan.rows(window, self._base, order))
            owned.append(rows)
            for i in self._windowed:
                arrays[i], takes[i] = self._memory[i], rows
            storage = []
        elif self._windowed:
            # Rows are written in serving order (scattered by the reading threads, on every core), so batches
            # are cut as slices and the thread that serves them copies contiguous memory.
            storage, buffers, fresh = self._read_window(plan, window, storage, order)
            decoded += fresh
            take = slice(0, plan.window_size(window))
            owned += storage
            for i, buffer in zip(self._windowed, buffers):
                arrays[i], takes[i] = buffer, take
        if decoded and self.watch is not None:  # after the reads: every row came from the store as it was
            self.watch.check()
        nbytes = sum(a.nbytes for a in {id(a): a for a in owned if isinstance(a, np.ndarray)}.values())
        return Window(window, storage or [], arrays, takes, nbytes, decoded, time.perf_counter() - started)

    def _read_window(
        self, plan: EpochPlan, window: int, storage: list[np.ndarray] | None, order: np.ndarray | None
    ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        size = plan.window_size(window)
        leaves = [self.inputs.leaves[i] for i in self._windowed]
        if storage is None or storage_rows(storage) < size:
            storage = [np.empty((size, *leaf.sample_shape), leaf.dtype) for leaf in leaves]
        buffers = [s[:size] for s in storage]
        first = int(plan.window_offsets[window])
        units = [
            Rows(int(c), *plan.chunk_range(int(c)), plan.kept_rows(u), int(plan.read_offsets[u]) - first)
            for u in plan.reads_of(window)
            for c in (plan.read_chunk[u],)
        ]
        scatter = None
        if order is not None:  # stream row order[k] is served k-th: it goes to buffer row k
            scatter = np.empty(size, np.intp)
            scatter[order] = np.arange(size, dtype=np.intp)
        jobs = [
            ReadJob(leaf.name, self._source(i), buffer, units, scatter)
            for i, leaf, buffer in zip(self._windowed, leaves, buffers)
        ]
        return storage, buffers, read(jobs, self.scheduler, (plan.epoch, window))

    def _load(self, plan: EpochPlan, window: int) -> int:
        """Wait until what the loader holds in memory and ``window`` of ``plan`` serves is read: the small arrays
        whole and, when the layout is resident, this shard's chunks of every other lazy array. Read once, on a
        thread of its own; for a plan served while it is decoded (:attr:`EpochPlan.progressive`) in the stages
        of its windows, so that window ``w`` waits only for the chunks of windows ``0`` to ``w``. Returns the
        bytes decoded that no window counted yet."""
        if not self._held and not (self._windowed and self._holds_windowed()):
            return 0
        with self._stages_lock:
            stages = self._stages
            if stages is None or stages.error is not None:  # first use, or a failed load: (again) from the start
                stages = self._stages = self._start(plan)
        return stages.wait(window if stages.by_window and plan.progressive else stages.last)

    def _start(self, plan: EpochPlan) -> Stages:
        n = self.inputs.n_samples
        held = [
            ReadJob(self.inputs.leaves[i].name, self._source(i), self._allocate(i, n), [Rows(-1, 0, n, None, 0)])
            for i in self._held
        ]
        by_window = plan.progressive and bool(self._windowed)  # progressive: one sample per row (the layout's rule)
        # By window: the chunks of each window of the plan, in its order, the arrays held whole with the first.
        groups = [plan.read_chunk[plan.reads_of(w)] for w in range(plan.n_windows)] if by_window else [None]
        jobs = [self._windowed_jobs(chunks) for chunks in groups]
        jobs[0] = held + jobs[0]
        nbytes = sum(job.buffer.nbytes for job in {id(j.buffer): j for stage in jobs for j in stage}.values())
        note = first_decode(nbytes if self.layout.resident else 0, while_served=by_window)
        loads = [functools.partial(read, stage, self.scheduler, (plan.epoch, w)) for w, stage in enumerate(jobs)]
        return Stages(loads, self.scheduler.closed, note, by_window)

    def _holds_windowed(self) -> bool:
        """Whether something of the windowed arrays is held in memory (read by :meth:`_load`)."""
        return self.layout.resident

    def _windowed_jobs(self, chunks: np.ndarray | None = None) -> list[ReadJob]:
        """The reads of the windowed arrays' rows held in memory: with a resident layout, the shard's chunks
        (or those of them in ``chunks``)."""
        if not self.layout.resident:
            return []
        bounds, shard = self.layout.chunk_bounds, self.layout.shard_chunks
        rows = int((bounds[shard + 1] - bounds[shard]).sum())
        chunks = shard if chunks is None else np.sort(chunks)
        units = [Rows(int(c), int(bounds[c]), int(bounds[c + 1]), None, int(self._base[c])) for c in chunks]
        return [
            ReadJob(self.inputs.leaves[i].name, self._source(i), self._allocate(i, rows), units) for i in self._windowed
        ]


class SampleWindowMaker(WindowMaker):
    """Makes the windows of samples cut by ``window=`` (see :mod:`daskfeed.samples`).

    A read unit is a chunk of axis 0 and holds the samples that start in it. Its rows go into the window's
    buffers end to end, unit after unit: the rows of its chunk that its kept samples span, then the rows they
    reach into the next chunks (its heads), which were read once and are held (or, when the budget cannot hold
    them, read with the unit). Batches are gathered from those raw rows, never one row per sample. A resident
    layout holds the shard's rows (chunks and heads, as runs) and gathers from them.
    """

    def __init__(self, inputs: Inputs, layout: Layout, scheduler: GraphRunner, watch: StoreWatch | None = None):
        super().__init__(inputs, layout, scheduler, watch)
        self.geometry, self.units = layout.geometry, layout.sample_units
        u, chunks = self.units, layout.shard_chunks
        own = np.minimum(u.own_stop(np.arange(len(u.chunks))), u.hi)
        #: Per unit, where the rows read from the array end and the rows taken from the heads begin.
        self._split = own if layout.heads else u.hi
        #: The rows held in memory: the shard's rows (resident), the heads, or none.
        self._rows: RowMap | None = None
        if layout.resident:
            self._rows = RowMap.of(u.lo[chunks], u.hi[chunks])
        elif layout.heads:
            self._rows = RowMap.of(own[chunks], u.hi[chunks])
        self._heads: dict[int, np.ndarray] = {}

    def _holds_windowed(self) -> bool:
        return self._rows is not None and self._rows.rows > 0

    def _windowed_jobs(self, chunks: np.ndarray | None = None) -> list[ReadJob]:
        runs = self._rows
        if runs is None or not runs.rows:
            return []
        units = [Rows(-1, int(lo), int(hi), None, int(at)) for lo, hi, at in zip(runs.lo, runs.hi, runs.at)]
        jobs = []
        for i in self._windowed:
            leaf = self.inputs.leaves[i]
            if self.layout.resident:
                target = self._allocate(i, runs.rows)
            else:
                with self._lock:
                    if i not in self._heads:
                        self._heads[i] = np.empty((runs.rows, *leaf.sample_shape), leaf.dtype)
                        self.held_nbytes += self._heads[i].nbytes
                    target = self._heads[i]
            jobs.append(ReadJob(leaf.name, self._source(i), target, units))
        return jobs

    def make(self, plan: EpochPlan, window: int, storage: list[np.ndarray] | None) -> Window:
        started = time.perf_counter()
        decoded = self._load(plan, window)
        g, u = self.geometry, self.units
        per_row = g.n_patches
        reading = not self.layout.resident and bool(self._windowed)
        # Every sample of a unit (one read per chunk, no split) and windows that overlap or touch: the unit
        # holds every row of its samples' span.
        whole = plan.reads == 1 and plan.config.subset is None and g.step <= g.length
        starts, patches, places = [], [], []
        reads: list[Rows] = []
        heads: list[tuple[int, np.ndarray]] = []  # (buffer row, rows of the heads held) to copy in
        at = 0
        for unit in plan.reads_of(window):
            j = int(plan.read_chunk[unit])
            kept = plan.kept_rows(unit)
            local = np.arange(int(plan.read_size[unit]), dtype=np.int64) if kept is None else kept
            ids = int(u.sample_bounds[j]) + local
            t = (ids // per_row if per_row > 1 else ids) * g.step
            starts.append(t)
            if per_row > 1:
                patches.append(ids % per_row)
            if not reading:
                continue
            lo, hi, split = int(u.lo[j]), int(u.hi[j]), int(self._split[j])
            rows, pos = hold(lo, hi, t, g.length, whole)
            n_held = hi - lo if rows is None else len(rows)
            n_own = split - lo if rows is None else int(np.searchsorted(rows, split - lo))
            reads.append(Rows(int(u.chunks[j]), lo, split, None if rows is None else rows[:n_own], at))
            if n_held > n_own:
                tail = np.arange(split, hi, dtype=np.int64) if rows is None else rows[n_own:] + lo
                heads.append((at + n_own, self._rows(tail)))
            places.append(at + pos)
            at += n_held
        order = plan.window_order(window)
        flat = np.concatenate(starts)
        patch = np.concatenate(patches) if per_row > 1 else None
        if order is not None:
            flat = flat[order]
            patch = None if patch is None else patch[order]
        leaves = self.inputs.leaves
        arrays: list[Any] = [None] * len(leaves)
        takes: list[Any] = [None] * len(leaves)
        owned: list[np.ndarray] = [flat] + ([patch] if patch is not None else [])
        for i in self._whole:  # by global row
            arrays[i], takes[i] = self._memory[i], Gather(g, i, flat, patch)
        if self.layout.resident:
            storage = []
            if self._windowed:
                rows = self._rows(flat)
                owned.append(rows)
                for i in self._windowed:
                    arrays[i], takes[i] = self._memory[i], Gather(g, i, rows, patch)
        elif reading:
            size = plan.window_rows(window)
            windowed = [leaves[i] for i in self._windowed]
            if storage is None or storage_rows(storage) < size:
                storage = [np.empty((size, *leaf.sample_shape), leaf.dtype) for leaf in windowed]
            buffers = [s[:at] for s in storage]
            for row, held in heads:
                for i, buffer in zip(self._windowed, buffers):
                    buffer[row : row + len(held)] = self._heads[i][held]
            jobs = [
                ReadJob(leaf.name, self._source(i), b, reads) for i, leaf, b in zip(self._windowed, windowed, buffers)
            ]
            decoded += read(jobs, self.scheduler, (plan.epoch, window))
            rows = np.concatenate(places)
            rows = rows if order is None else rows[order]
            owned += [*storage, rows]
            for i, buffer in zip(self._windowed, buffers):
                arrays[i], takes[i] = buffer, Gather(g, i, rows, patch)
        if decoded and self.watch is not None:
            self.watch.check()
        nbytes = sum(a.nbytes for a in {id(a): a for a in owned}.values())
        return Window(window, storage or [], arrays, takes, nbytes, decoded, time.perf_counter() - started)


def window_maker(
    inputs: Inputs, layout: Layout, scheduler: GraphRunner, watch: StoreWatch | None = None
) -> WindowMaker:
    """The window maker for ``layout``: one sample per row, or samples cut by ``window=``."""
    maker = WindowMaker if layout.geometry is None else SampleWindowMaker
    return maker(inputs, layout, scheduler, watch)


def decoded_at_once(array: Any) -> int:
    """Decoded bytes of the largest chunk (zarr's) or block (dask's) read at once from a lazy array."""
    z = zarr_behind(array)
    shape = tuple(z.chunks) if z is not None else tuple(max(c, default=0) for c in array.chunks)
    return int(np.dtype(array.dtype).itemsize * math.prod(shape))


def _contiguous(rows: np.ndarray) -> np.ndarray | slice:
    """``rows`` as a slice when they are a run of consecutive rows (storage order), else as they are."""
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows

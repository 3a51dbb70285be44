"""Computes windows through dask on named background threads that live only while there is work."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.core import flatten
from dask.optimization import cull

from daskfeed.errors import ChunkReadError
from daskfeed.inputs import Inputs, zarr_behind
from daskfeed.plan import EpochPlan

__all__ = ["BlockSource", "Scheduler", "Window", "WorkerPool", "build_window", "storage_rows"]

_thread_ids = itertools.count()
_graph_ids = itertools.count()


class WorkerPool:
    """A small pool whose threads, named ``daskfeed-prefetch-N``, start on submit and end when idle.

    No thread outlives the work it was given, so nothing is left running after an epoch, an early
    ``break`` or an exception in the training step; :meth:`close` cancels what has not started and
    waits for what has.
    """

    def __init__(self, max_threads: int = 2, name: str = "daskfeed-prefetch"):
        self._max = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._jobs: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a closed daskfeed worker pool")
            self._jobs.append((future, fn, args))
            if len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{next(_thread_ids)}", daemon=True)
                self._threads.add(thread)
                thread.start()
        return future

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                if not self._jobs:
                    self._threads.discard(me)
                    return
                future, fn, args = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # travels to the consumer through the future
                future.set_exception(err)
            # Drop references now, so a finished window lives only as long as the loader holds it.
            del future, fn, args

    def close(self, wait: bool = True) -> None:
        """Cancel jobs not started; with ``wait``, join the threads running the others. Idempotent."""
        with self._lock:
            self._closed = True
            jobs, self._jobs = list(self._jobs), deque()
            threads = list(self._threads)
        for future, _, _ in jobs:
            future.cancel()
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


@dataclass(eq=False)
class Window:
    """The decoded samples of one window: one buffer per leaf in read-unit order, and the serving order.

    ``buffers`` are views of the first rows of ``storage``, which may be larger: the storage of a window that
    was let go is used again, because writing into fresh memory costs page faults.
    """

    index: int
    buffers: list[np.ndarray]
    storage: list[np.ndarray]
    order: np.ndarray | None
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.storage) + (0 if self.order is None else self.order.nbytes)


def storage_rows(storage: list[np.ndarray]) -> int:
    return len(storage[0]) if storage else 0


class BlockSource:
    """The optimized task graph of one lazy array and the key of each block along the sample axis.

    The graph is materialized once; a window then takes only the tasks its blocks need (a cull that walks
    from those keys), so computing a window costs the same on an array of a hundred chunks or of a million.
    """

    def __init__(self, array: da.Array):
        #: The zarr array itself when the dask array is exactly that array: read without a copy (_read_zarr).
        self.zarr = zarr_behind(array)
        if any(len(c) > 1 for c in array.chunks[1:]):
            # One task per sample-axis block, so each block is computed once however the other axes are cut.
            array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
        (array,) = dask.optimize(array)
        self.graph = dict(array.__dask_graph__())
        self.keys = list(flatten(array.__dask_keys__()))
        self._index = {key: b for b, key in enumerate(self.keys)}
        self.bounds = np.concatenate([[0], np.cumsum(array.chunks[0])]).astype(np.int64)

    def block_range(self, key: Any) -> tuple[int, int]:
        """The ``(start, stop)`` samples of the block with ``key``."""
        b = self._index[key]
        return int(self.bounds[b]), int(self.bounds[b + 1])

    def parts(self, start: int, stop: int, rows: np.ndarray | None) -> list[tuple[Any, int, np.ndarray | None]]:
        """``(block key, position in the read unit, block-local rows or None)`` for samples ``[start, stop)``."""
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
        out = []
        done = 0
        for b in range(first, last + 1):
            lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
            if rows is None:
                out.append((self.keys[b], done, None))
                done += hi - lo
            else:
                a, z = np.searchsorted(rows, [lo - start, hi - start])
                if z > a:
                    out.append((self.keys[b], done, rows[a:z] - (lo - start)))
                    done += int(z - a)
        return out


def _write(buffer: np.ndarray, at: int, block: np.ndarray, rows: np.ndarray | None) -> None:
    data = block if rows is None else block[rows]
    buffer[at : at + len(data)] = data


def _read_zarr(array: Any, lo: int, hi: int, buffer: np.ndarray, at: int, rows: np.ndarray | None) -> None:
    """Decode samples ``[lo, hi)`` of a zarr array straight into the window's buffer (one copy fewer)."""
    if rows is not None:
        _write(buffer, at, array[lo:hi], rows)
        return
    from zarr.core.buffer import default_buffer_prototype

    out = default_buffer_prototype().nd_buffer.from_numpy_array(buffer[at : at + hi - lo])
    array.get_basic_selection(slice(lo, hi), out=out)


def _select(block: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return block if rows is None else block[rows]


class Scheduler:
    """What ``scheduler=`` names, resolved once: a ``get`` for task graphs, or a distributed client."""

    def __init__(self, scheduler: Any):
        import dask.local
        import dask.threaded
        from dask.base import get_scheduler

        get = get_scheduler(scheduler=scheduler)
        self.client = getattr(get, "__self__", None) if get is not None else None
        if self.client is not None and not hasattr(self.client, "gather"):
            self.client = None
        self.get = dask.threaded.get if get is None else get
        #: Whether tasks run in this process and can write into the window's buffers.
        self.shared_memory = self.get in (dask.threaded.get, dask.local.get_sync)


def _window_graph(sources, needed: dict[int, list], make_task) -> tuple[dict, list]:
    graph: dict = {}
    outs = []
    token = next(_graph_ids)
    for li, parts in needed.items():
        source = sources[li]
        sub, _ = cull(source.graph, list({key for key, *_ in parts}))
        graph.update(sub)
        for i, part in enumerate(parts):
            key = (f"daskfeed-window-{token}", li, i)
            graph[key] = make_task(li, *part)
            outs.append(key)
    return graph, outs


def build_window(
    inputs: Inputs,
    sources: list[BlockSource | None],
    plan: EpochPlan,
    window: int,
    scheduler: Scheduler,
    storage: list[np.ndarray] | None = None,
) -> Window:
    """Decode the read units of ``window`` into one buffer per leaf, with one dask call for the window.

    ``storage``, if given, is one array per leaf with at least the window's rows, to write into.

    On a scheduler that shares this process's memory (threads, synchronous) each task writes its decoded
    block into the window's buffer, so the block is dropped as soon as it is written; elsewhere the
    blocks (already cut to the rows the read keeps) come back as they finish and are copied in.
    """
    started = time.perf_counter()
    size = plan.window_size(window)
    units = list(plan.units(window))
    spans = [plan.chunk_range(int(plan.unit_chunk[u])) for u in units]
    rows = [plan.unit_rows(u) for u in units]
    offsets = plan.unit_offsets[units[0] : units[-1] + 2] - plan.unit_offsets[units[0]]
    if storage is None or storage_rows(storage) < size:
        storage = [np.empty((size, *leaf.sample_shape), dtype=leaf.dtype) for leaf in inputs.leaves]
    buffers = [s[:size] for s in storage]
    needed: dict[int, list] = {}
    for li, (leaf, source) in enumerate(zip(inputs.leaves, sources)):
        for k, ((start, stop), kept) in enumerate(zip(spans, rows)):
            at = int(offsets[k])
            if source is None:  # in memory: a numpy copy, no dask
                src = leaf.array[start:stop]
                buffers[li][at : int(offsets[k + 1])] = src if kept is None else src[kept]
                continue
            for key, pos, block_rows in source.parts(start, stop, kept):
                needed.setdefault(li, []).append((key, at + pos, block_rows))
    if needed:
        try:
            if scheduler.shared_memory:
                through_dask = {li: parts for li, parts in needed.items() if sources[li].zarr is None}
                graph, outs = _window_graph(
                    sources, through_dask, lambda li, key, at, r: (_write, buffers[li], at, key, r)
                )
                token = next(_graph_ids)
                for li in needed.keys() - through_dask.keys():  # exactly a zarr array: no graph to cull
                    source = sources[li]
                    for i, (key, at, r) in enumerate(needed[li]):
                        out = (f"daskfeed-zarr-{token}", li, i)
                        graph[out] = (_read_zarr, source.zarr, *source.block_range(key), buffers[li], at, r)
                        outs.append(out)
                scheduler.get(graph, outs)
            else:
                graph, outs = _window_graph(sources, needed, lambda li, key, at, r: (_select, key, r))
                places = [(buffers[li], at) for li, parts in needed.items() for _, at, _ in parts]
                _gather_remote(graph, outs, places, scheduler)
        except Exception as err:
            raise _locate_failure(inputs, sources, plan, window, units, spans, rows, scheduler, err) from err
    return Window(window, buffers, storage, plan.window_order(window), time.perf_counter() - started)


def _gather_remote(graph: dict, outs: list, places: list, scheduler: Scheduler) -> None:
    """Compute blocks in other processes and copy each into place as it arrives."""
    if scheduler.client is None:
        for value, (buffer, at) in zip(scheduler.get(graph, outs), places):
            buffer[at : at + len(value)] = value
        return
    from distributed import as_completed

    futures = scheduler.client.get(graph, outs, sync=False)
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for future, value in as_completed(futures, with_results=True):
            buffer, at = places[index[future.key]]
            buffer[at : at + len(value)] = value
    finally:
        scheduler.client.cancel(futures)


def _locate_failure(
    inputs: Inputs,
    sources: list[BlockSource | None],
    plan: EpochPlan,
    window: int,
    units: list[int],
    spans: list[tuple[int, int]],
    rows: list,
    scheduler: Scheduler,
    err: Exception,
) -> ChunkReadError:
    """Find the array and chunk whose computation failed, by computing them one at a time."""
    lazy = [li for li, source in enumerate(sources) if source is not None]
    for k, ((start, stop), kept) in enumerate(zip(spans, rows)):
        for li in lazy:
            parts = [(key, pos, r) for key, pos, r in sources[li].parts(start, stop, kept)]
            graph, outs = _window_graph(sources, {li: parts}, lambda _li, key, _at, r: (_select, key, r))
            try:
                scheduler.get(graph, outs)
            except Exception as one:
                chunk = int(plan.unit_chunk[units[k]])
                name = inputs.leaves[li].name
                return ChunkReadError(
                    f"reading array {name} chunk {chunk} (samples {start}-{stop - 1}) failed: "
                    f"{type(one).__name__}: {one}",
                    array=name,
                    chunk=chunk,
                    samples=(start, stop),
                )
    chunks = sorted({int(plan.unit_chunk[u]) for u in units})
    return ChunkReadError(
        f"computing window {window} of epoch {plan.epoch} (chunks {chunks}) failed with "
        f"{type(err).__name__}: {err}; computed again one chunk at a time, every chunk succeeded, so the "
        "failure did not repeat",
        array=inputs.leaves[lazy[0]].name,
        chunk=chunks[0],
        samples=spans[0],
    )

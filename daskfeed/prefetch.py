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

from daskfeed.errors import ChunkReadError
from daskfeed.inputs import Inputs
from daskfeed.plan import EpochPlan

__all__ = ["BlockSource", "Window", "WorkerPool", "build_window", "is_shared_memory"]

_thread_ids = itertools.count()


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
    """The decoded samples of one window: one buffer per leaf in read-unit order, and the serving order."""

    index: int
    buffers: list[np.ndarray]
    order: np.ndarray | None
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers) + (0 if self.order is None else self.order.nbytes)


def is_shared_memory(scheduler: Any) -> bool:
    """Whether dask runs tasks of ``scheduler`` in this process, where they can write into our buffers."""
    import dask.local
    import dask.threaded
    from dask.base import get_scheduler

    get = get_scheduler(scheduler=scheduler)
    return get is None or get in (dask.threaded.get, dask.local.get_sync)


class BlockSource:
    """The sample-axis blocks of one lazy array as ``Delayed`` objects, optimized once, for cheap graphs.

    Slicing a dask array costs about a millisecond per slice on a hundred-block array and grows with the
    number of blocks; a window graph made of these ``Delayed`` blocks costs microseconds per read unit.
    """

    def __init__(self, array: da.Array):
        if any(len(c) > 1 for c in array.chunks[1:]):
            # One task per sample-axis block, so each block is computed once however the other axes are cut.
            array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
        self.blocks = array.to_delayed(optimize_graph=True).reshape(-1)
        self.bounds = np.concatenate([[0], np.cumsum(array.chunks[0])]).astype(np.int64)

    def parts(self, start: int, stop: int, rows: np.ndarray | None) -> list[tuple[Any, int, np.ndarray | None]]:
        """``(block, position in the read unit, block-local rows or None)`` for samples ``[start, stop)``."""
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
        out = []
        done = 0
        for b in range(first, last + 1):
            lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
            if rows is None:
                out.append((self.blocks[b], done, None))
                done += hi - lo
            else:
                a, z = np.searchsorted(rows, [lo - start, hi - start])
                if z > a:
                    out.append((self.blocks[b], done, rows[a:z] - (lo - start)))
                    done += int(z - a)
        return out


def _write(buffer: np.ndarray, at: int, block: np.ndarray, rows: np.ndarray | None) -> None:
    data = block if rows is None else block[rows]
    buffer[at : at + len(data)] = data


def _select(block: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return block if rows is None else block[rows]


def build_window(
    inputs: Inputs,
    sources: list[BlockSource | None],
    plan: EpochPlan,
    window: int,
    scheduler: Any,
    shared_memory: bool,
) -> Window:
    """Decode the read units of ``window`` into one buffer per leaf, with one dask call for the window.

    On a scheduler that shares this process's memory (threads, synchronous) each task writes its decoded
    block into the window's buffer, so the block is dropped as soon as it is written; on a cluster the
    blocks (already cut to the rows the read keeps) come back as they finish and are copied in.
    """
    started = time.perf_counter()
    size = plan.window_size(window)
    units = list(plan.units(window))
    spans = [plan.chunk_range(int(plan.unit_chunk[u])) for u in units]
    rows = [plan.unit_rows(u) for u in units]
    offsets = plan.unit_offsets[units[0] : units[-1] + 2] - plan.unit_offsets[units[0]]
    buffers = [np.empty((size, *leaf.sample_shape), dtype=leaf.dtype) for leaf in inputs.leaves]
    tasks, places, where = [], [], []
    for li, (leaf, source) in enumerate(zip(inputs.leaves, sources)):
        for k, ((start, stop), kept) in enumerate(zip(spans, rows)):
            at = int(offsets[k])
            if source is None:  # in memory: a numpy copy, no dask
                src = leaf.array[start:stop]
                buffers[li][at : int(offsets[k + 1])] = src if kept is None else src[kept]
                continue
            where.append((li, k))
            for block, pos, block_rows in source.parts(start, stop, kept):
                if shared_memory:
                    tasks.append(dask.delayed(_write, pure=False)(buffers[li], at + pos, block, block_rows))
                else:
                    tasks.append(dask.delayed(_select, pure=False)(block, block_rows))
                    places.append((buffers[li], at + pos))
    if tasks:
        try:
            if shared_memory:
                dask.compute(*tasks, scheduler=scheduler)
            else:
                _gather_remote(tasks, places, scheduler)
        except Exception as err:
            raise _locate_failure(inputs, sources, plan, window, units, spans, rows, where, scheduler, err) from err
    return Window(window, buffers, plan.window_order(window), time.perf_counter() - started)


def _gather_remote(tasks: list, places: list, scheduler: Any) -> None:
    """Compute blocks on a scheduler in other processes and copy each into place as it arrives."""
    client = scheduler if hasattr(scheduler, "compute") and hasattr(scheduler, "gather") else None
    if client is None and scheduler is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for future, value in as_completed(futures, with_results=True):
                buffer, at = places[index[future.key]]
                buffer[at : at + len(value)] = value
        finally:
            client.cancel(futures)
        return
    for value, (buffer, at) in zip(dask.compute(*tasks, scheduler=scheduler), places):
        buffer[at : at + len(value)] = value


def _locate_failure(
    inputs: Inputs,
    sources: list[BlockSource | None],
    plan: EpochPlan,
    window: int,
    units: list[int],
    spans: list[tuple[int, int]],
    rows: list,
    where: list[tuple[int, int]],
    scheduler: Any,
    err: Exception,
) -> ChunkReadError:
    """Find the array and chunk whose computation failed, by computing them one at a time."""
    for li, k in where:
        leaf = inputs.leaves[li]
        (start, stop), kept = spans[k], rows[k]
        try:
            parts = sources[li].parts(start, stop, kept)
            dask.compute(*[dask.delayed(_select, pure=False)(b, r) for b, _, r in parts], scheduler=scheduler)
        except Exception as one:
            chunk = int(plan.unit_chunk[units[k]])
            return ChunkReadError(
                f"reading array {leaf.name} chunk {chunk} (samples {start}-{stop - 1}) failed: "
                f"{type(one).__name__}: {one}",
                array=leaf.name,
                chunk=chunk,
                samples=(start, stop),
            )
    li, k = where[0]
    chunk = int(plan.unit_chunk[units[k]])
    chunks = sorted({int(plan.unit_chunk[u]) for u in units})
    return ChunkReadError(
        f"computing window {window} of epoch {plan.epoch} (chunks {chunks}) failed with "
        f"{type(err).__name__}: {err}; computed again one chunk at a time, every chunk succeeded, so the "
        "failure did not repeat",
        array=inputs.leaves[li].name,
        chunk=chunk,
        samples=spans[k],
    )

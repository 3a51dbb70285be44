"""Reads chunks through dask into buffers, on named background threads that live only while there is work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.optimization import cull

from daskfeed._compat import buffer_prototype, dask_keys, dask_threaded_get
from daskfeed.decode import ChunkCodec, ChunkTarget, read_chunks
from daskfeed.errors import ChunkReadError, DaskfeedError
from daskfeed.inputs import zarr_behind

__all__ = ["BlockPart", "BlockSource", "GraphRunner", "ReadJob", "UnitRead", "WorkerPool", "read_blocks"]

_thread_ids = itertools.count()
#: Requests for chunks of a store that is not local files that a loader keeps in flight, by default.
DEFAULT_CONCURRENCY = 32
#: A read waiting on a cluster checks this often whether the loader closed or the cluster lost its workers.
REMOTE_WAIT_SLICE_S = 0.5
#: Chunks read whole into consecutive rows are read with one zarr call of up to this many decoded bytes.
RUN_BYTES = 2**62


class WorkerPool:
    """A small pool whose threads, named ``daskfeed-prefetch-N``, start on submit and end when idle.

    No thread outlives the work it was given, so nothing is left running after an epoch, an early
    ``break`` or an exception in the training step; :meth:`close` cancels what has not started and
    waits for what has.
    """

    def __init__(self, max_threads: int = 2, name: str = "daskfeed-prefetch"):
        self.max_threads = self._max = max_threads
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


class GraphRunner:
    """What ``scheduler=`` names, resolved once: how to compute a task graph, here or on a cluster.

    dask's threaded scheduler runs on threads of daskfeed's own (``daskfeed-read-N``, at most one per core,
    ending when idle), not on dask's process-wide pools: those and the lock that guards them are inherited,
    possibly locked, by a process that Keras forks (``use_multiprocessing=True``), and hang it. A forked child
    makes its own threads.
    """

    def __init__(
        self,
        scheduler: Any,
        no_workers_timeout: float = 60.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        threads: int | None = None,
    ):
        import dask.local
        import dask.threaded
        from dask.base import get_scheduler

        get = get_scheduler(scheduler=scheduler)
        self.client = getattr(get, "__self__", None) if get is not None else None
        if self.client is not None and not hasattr(self.client, "gather"):
            self.client = None
        self._get = dask.threaded.get if get is None else get
        self._threaded = self._get is dask.threaded.get
        #: Whether tasks run in this process and can write into the loader's buffers.
        self.shared_memory = self._threaded or self._get is dask.local.get_sync
        self._pool: WorkerPool | None = None
        self._pid = 0
        self.no_workers_timeout = no_workers_timeout
        self.concurrency = concurrency
        #: Reading threads (chunks decoded at once): one per usable core unless fewer are asked for.
        self.threads = threads
        self._limit: asyncio.Semaphore | None = None
        #: Set by :meth:`close`: reads waiting on a cluster stop (and cancel their futures) within a slice.
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def _threads(self) -> WorkerPool:
        pool = self._pool
        if pool is None or self._pid != os.getpid():  # first use, or a forked child: threads of its own
            pool = self._pool = WorkerPool(max_threads=self.threads or usable_cores(), name="daskfeed-read")
            self._limit = None
            self._pid = os.getpid()
        return pool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a ``daskfeed-read`` thread (one per usable core), or at once with the
        synchronous scheduler."""
        if self._threaded:
            return self._threads().submit(fn, *args)
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future

    def in_flight(self) -> asyncio.Semaphore:
        """The loader's limit on chunk requests in flight (``concurrency``), made in zarr's event loop."""
        self._threads()
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        return self._limit

    def get(self, graph: dict, keys: list) -> Any:
        if not self._threaded:
            return self._get(graph, keys)
        pool = self._threads()
        return dask_threaded_get(pool.submit, pool.max_threads, graph, keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = state["_limit"] = None  # threads stay behind; a copy in another process makes its own
        state["closed"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.closed = threading.Event()


class UnitRead(NamedTuple):
    """One read unit to read into a buffer: the samples of its chunk, the rows it keeps, where they go."""

    chunk: int  # index of the read unit's chunk (for messages)
    start: int  # the chunk's first sample
    stop: int  # one past its last sample
    rows: np.ndarray | None  # sorted chunk-local rows the read keeps, or None for all of them
    at: int  # the buffer row the first kept sample goes to


class BlockPart(NamedTuple):
    """What one read unit takes from one block (dask chunk) of one array."""

    block: int  # index of the block along the sample axis
    lo: int  # block-local rows [lo, hi) that lie in the read unit
    hi: int
    rows: np.ndarray | None  # block-local rows kept (within [lo, hi)), or None for all of [lo, hi)
    at: int  # the buffer row the first of them goes to

    @property
    def count(self) -> int:
        return self.hi - self.lo if self.rows is None else len(self.rows)


class BlockSource:
    """The optimized task graph of one lazy array and the key of each block along the sample axis.

    The graph is materialized once; a read then takes only the tasks its blocks need (a cull that walks
    from those keys), so reading costs the same on an array of a hundred chunks or of a million.
    """

    def __init__(self, array: da.Array):
        #: The zarr array itself when the dask array is exactly that array: read without a copy (_read_zarr).
        self.zarr = zarr_behind(array)
        #: How to decode its stored chunks on daskfeed's threads, when that can be done (see ChunkCodec).
        self.codec = ChunkCodec.of(self.zarr) if self.zarr is not None else None
        self.row_bytes = int(np.dtype(array.dtype).itemsize * np.prod(array.shape[1:], dtype=np.int64))
        self.bounds = np.concatenate([[0], np.cumsum(array.chunks[0])]).astype(np.int64)
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

    def parts(self, unit: UnitRead) -> list[BlockPart]:
        """The blocks that hold the samples ``unit`` keeps, each clipped to the unit (blocks may straddle units)."""
        start, stop, rows = unit.start, unit.stop, unit.rows
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
        out, at = [], unit.at
        for b in range(first, last + 1):
            lo, hi = max(start, int(self.bounds[b])), min(stop, int(self.bounds[b + 1]))
            base = int(self.bounds[b])
            if rows is None:
                out.append(BlockPart(b, lo - base, hi - base, None, at))
                at += hi - lo
                continue
            a, z = np.searchsorted(rows, [lo - start, hi - start])
            if z > a:
                out.append(BlockPart(b, lo - base, hi - base, rows[a:z] + (start - base), at))
                at += int(z - a)
        return out


@dataclass(eq=False)
class ReadJob:
    """Read units of one array into one buffer: what a window (or the data held whole) needs of that array."""

    name: str  # the array's name, for messages
    source: BlockSource
    buffer: np.ndarray
    units: list[UnitRead]
    #: Where each row goes: row ``at`` of the units' stream lands in ``buffer[scatter[at]]`` (a window written
    #: in its serving order, so that batches are cut as slices); None for ``buffer[at]``.
    scatter: np.ndarray | None = None

    #: The parts to read, by block: a block that several units take from is read once.
    blocks: dict[int, list[BlockPart]] = field(init=False)

    def __post_init__(self) -> None:
        # Worked out here, not in a functools.cached_property: on Python 3.11 that takes one lock shared by every
        # instance, which a process forked while a reading thread held it inherits held, and hangs on.
        self.blocks = {}
        for unit in self.units:
            for part in self.source.parts(unit):
                self.blocks.setdefault(part.block, []).append(part)


def _select(block: np.ndarray, *, parts: list[BlockPart], shift: int = 0) -> list[np.ndarray]:
    """Each part's rows of ``block`` (which holds the block's rows from ``shift`` on)."""
    return [block[p.lo - shift : p.hi - shift] if p.rows is None else block[p.rows - shift] for p in parts]


def rows_at(scatter: np.ndarray | None, at: int, count: int) -> slice | np.ndarray:
    """The buffer rows that ``count`` rows from stream position ``at`` go to (see :attr:`ReadJob.scatter`)."""
    return slice(at, at + count) if scatter is None else scatter[at : at + count]


def _put(
    buffer: np.ndarray, parts: list[BlockPart], data: np.ndarray, shift: int = 0, scatter: np.ndarray | None = None
) -> None:
    """Copy each part's rows of ``data`` (block rows from ``shift`` on) into place."""
    for p, rows in zip(parts, _select(data, parts=parts, shift=shift)):
        buffer[rows_at(scatter, p.at, len(rows))] = rows


def _read_zarr(
    array: Any, offset: int, parts: list[BlockPart], buffer: np.ndarray, scatter: np.ndarray | None = None
) -> None:
    """Decode what ``parts`` need of one zarr chunk, straight into the buffer when the rows are contiguous."""
    if len(parts) == 1 and parts[0].rows is None and scatter is None:
        p = parts[0]
        out = buffer_prototype().nd_buffer.from_numpy_array(buffer[p.at : p.at + p.hi - p.lo])
        array.get_basic_selection(slice(offset + p.lo, offset + p.hi), out=out)
        return
    lo, hi = min(p.lo for p in parts), max(p.hi for p in parts)
    _put(buffer, parts, array[offset + lo : offset + hi], lo, scatter)


def _read_zarr_run(array: Any, start: int, stop: int, at: int, buffer: np.ndarray) -> None:
    """Decode samples ``[start, stop)`` of a zarr array, across chunks, straight into ``buffer[at:]``.

    One call for many chunks lets zarr fetch and decode them concurrently.
    """
    out = buffer_prototype().nd_buffer.from_numpy_array(buffer[at : at + stop - start])
    array.get_basic_selection(slice(start, stop), out=out)


def _zarr_runs(source: BlockSource, blocks: dict[int, list[BlockPart]]) -> list[tuple[int, int, int] | int]:
    """Blocks read whole into consecutive rows merged into ``(start, stop, at)`` runs; other blocks as they are.

    :data:`RUN_BYTES` bounds a run; it is so high that no run is split: zarr decodes a run's chunks concurrently.
    """
    out: list = []
    run: list | None = None
    for b in sorted(blocks):
        parts = blocks[b]
        start, stop = source.block_range(b)
        whole = len(parts) == 1 and parts[0].rows is None and parts[0].lo == 0 and parts[0].hi == stop - start
        if not whole:
            run = None
            out.append(b)
            continue
        follows = run is not None and run[1] == start and run[2] + (start - run[0]) == parts[0].at
        if follows and (stop - run[0]) * source.row_bytes <= RUN_BYTES:
            run[1] = stop
            continue
        run = [start, stop, parts[0].at]
        out.append(run)
    return [tuple(r) if isinstance(r, list) else r for r in out]


def _chunk_targets(job: ReadJob) -> list[ChunkTarget]:
    """The stored chunks ``job`` needs, each once, with the rows each of its parts takes from it.

    A block (dask chunk) may span several zarr chunks or part of one; chunks along the other axes each
    become a target of their own, so a block's decoding spreads over every core.
    """
    codec, source = job.source.codec, job.source
    step = codec.chunk_shape[0]
    puts: dict[int, list] = {}
    block_of: dict[int, int] = {}
    for b, parts in job.blocks.items():
        base = int(source.bounds[b])
        for p in parts:
            if p.rows is None:
                lo, hi = base + p.lo, base + p.hi
                for c in range(lo // step, (hi - 1) // step + 1):
                    a, z = max(lo, c * step), min(hi, (c + 1) * step)
                    puts.setdefault(c, []).append((slice(a - c * step, z - c * step), p.at + a - lo))
                    block_of.setdefault(c, b)
                continue
            rows = p.rows + base
            chunk_of = rows // step
            cuts = np.flatnonzero(np.diff(chunk_of)) + 1
            for group in np.split(np.arange(len(rows)), cuts):
                c = int(chunk_of[group[0]])
                puts.setdefault(c, []).append((rows[group] - c * step, p.at + int(group[0])))
                block_of.setdefault(c, b)
    across = [range(-(-s // c)) for s, c in zip(codec.shape[1:], codec.chunk_shape[1:])]
    return [
        ChunkTarget(
            job.name, codec, (c, *rest), job.buffer, puts[c], block_of[c], source.block_range(block_of[c]), job.scatter
        )
        for c in sorted(puts)
        for rest in itertools.product(*across)
    ]


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, cgroup cpusets), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _write(buffer: np.ndarray, parts: list[BlockPart], scatter: np.ndarray | None, block: np.ndarray) -> None:
    _put(buffer, parts, block, scatter=scatter)


def _block_task(source: BlockSource, block: int) -> tuple[dict, Any]:
    """The graph and the task (or key) that compute ``block`` of ``source``, for work done elsewhere."""
    if source.zarr is not None:  # the zarr array travels; its chunk is read where the task runs
        return {}, (source.zarr.__getitem__, slice(*source.block_range(block)))
    return cull(source.graph, [source.keys[block]])[0], source.keys[block]


def _graph(jobs: list[ReadJob], local: bool) -> tuple[dict, list, list]:
    """One graph for all jobs: a task per block (or run of whole zarr chunks) that writes its rows into the
    buffer (``local``) or returns them.

    Parts and buffers are bound with ``functools.partial``, so dask never looks inside them.
    """
    token = f"daskfeed-read-{uuid.uuid4().hex}"  # unique across processes that share a cluster
    graph: dict = {}
    places: list = []
    for j, job in enumerate(jobs):
        source, blocks = job.source, job.blocks
        if local and source.zarr is not None:  # zarr decodes straight into the buffer, without dask's graph
            for run in _zarr_runs(source, blocks) if job.scatter is None else list(blocks):
                if isinstance(run, int):
                    read = functools.partial(
                        _read_zarr, source.zarr, int(source.bounds[run]), blocks[run], job.buffer, job.scatter
                    )
                    graph[(token, j, "block", run)] = (read,)
                else:
                    graph[(token, j, "run", run[0])] = (
                        functools.partial(_read_zarr_run, source.zarr, *run, job.buffer),
                    )
            continue
        for b, parts in blocks.items():
            sub, task = _block_task(source, b)
            graph.update(sub)
            if local:
                write = functools.partial(_write, job.buffer, parts, job.scatter)
            else:
                write = functools.partial(_select, parts=parts)
            graph[(token, j, "block", b)] = (write, task)
            places.append((job.buffer, parts, job.scatter))
    outs = [key for key in graph if isinstance(key, tuple) and key[0] == token]
    return graph, outs, places


def read_blocks(jobs: list[ReadJob], scheduler: GraphRunner) -> int:
    """Read every job's units into its buffer with one dask call; returns the bytes of the blocks decoded.

    On a scheduler that shares this process's memory (threads, synchronous) each task writes its block's
    rows into the buffer, so the block is dropped as soon as it is written; elsewhere the rows come back as
    they finish and are copied in. A failure is raised as :class:`ChunkReadError` naming the array and chunk.
    """
    jobs = [job for job in jobs if job.units]
    if not jobs:
        return 0
    try:
        if scheduler.shared_memory:
            targets = [t for job in jobs if job.source.codec is not None for t in _chunk_targets(job)]
            if targets:
                read_chunks(targets, scheduler.submit, scheduler.closed, scheduler.in_flight)
            others = [job for job in jobs if job.source.codec is None]
            if others:
                graph, outs, _ = _graph(others, local=True)
                scheduler.get(graph, outs)
        else:
            graph, outs, places = _graph(jobs, local=False)
            _gather_remote(graph, outs, places, scheduler)
    except DaskfeedError:  # closed while waiting
        raise
    except _NoWorkers as err:
        first = jobs[0]
        raise ChunkReadError(
            f"reading array {first.name} failed: {err}",
            array=first.name,
            chunk=min(first.blocks),
            samples=first.source.block_range(min(first.blocks)),
        ) from None
    except Exception as err:
        client = scheduler.client
        if client is not None and client.status != "running":  # no cluster to ask again, chunk by chunk
            first = jobs[0]
            raise ChunkReadError(
                f"reading array {first.name} failed because the dask cluster went away (client status "
                f"{client.status!r}): {type(err).__name__}: {err}",
                array=first.name,
                chunk=min(first.blocks),
                samples=first.source.block_range(min(first.blocks)),
            ) from err
        raise _locate_failure(jobs, scheduler, err) from err
    decoded = 0
    for job in jobs:
        for b in job.blocks:
            start, stop = job.source.block_range(b)
            decoded += (stop - start) * job.source.row_bytes
    return decoded


def _gather_remote(graph: dict, outs: list, places: list, scheduler: GraphRunner) -> None:
    """Compute blocks in other processes and copy each part into place as it arrives."""

    def place(i: int, values: list[np.ndarray]) -> None:
        buffer, parts, scatter = places[i]
        for p, value in zip(parts, values):
            buffer[rows_at(scatter, p.at, len(value))] = value

    if scheduler.client is None:
        for i, values in enumerate(scheduler.get(graph, outs)):
            place(i, values)
        return

    futures = scheduler.client.get(graph, outs, sync=False)
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for future, values in _as_done(futures, scheduler):
            place(index[future.key], values)
    finally:
        with contextlib.suppress(Exception):  # best effort: a client that lost its scheduler cannot cancel
            scheduler.client.cancel(futures)


class _NoWorkers(Exception):
    """A cluster without workers for longer than the loader's ``no_workers_timeout``."""


def _as_done(futures: list, scheduler: GraphRunner) -> Iterator[tuple[Any, Any]]:
    """``(future, result)`` for each of ``futures``, in order, each result fetched once; fails when the loader
    closes, or when the cluster has had no workers for ``no_workers_timeout`` seconds (distributed would wait
    for workers forever). Each future is waited for through its own client, in slices (``distributed.wait``
    would use the default client)."""
    idle_since = None
    for future in futures:
        while True:
            try:
                values = future.result(timeout=REMOTE_WAIT_SLICE_S)  # the task's error, or why it was cancelled
                break
            except TimeoutError:  # one class from Python 3.11, two before
                pass
            if scheduler.closed.is_set():
                raise DaskfeedError("the loader was closed while chunks were being read on the cluster")
            if scheduler.client.status != "running" or scheduler.client.nthreads():
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= scheduler.no_workers_timeout:
                raise _NoWorkers(
                    f"the dask cluster ({scheduler.client.scheduler.address}) has had no workers for "
                    f"{scheduler.no_workers_timeout:g} s while chunk reads waited (scaled to zero, or its workers "
                    "died and were not restarted); start workers, or raise no_workers_timeout"
                )
        idle_since = None
        yield future, values


def _waited(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) is a timeout or a lost connection: reading again would wait again."""
    while err is not None:
        if isinstance(err, (TimeoutError, asyncio.TimeoutError, ConnectionError)) or "Timeout" in type(err).__name__:
            return True
        err = err.__cause__ or err.__context__
    return False


def _locate_failure(jobs: list[ReadJob], scheduler: GraphRunner, err: Exception) -> ChunkReadError:
    """Find the array and chunk whose read failed, by reading the blocks again one at a time (not after a
    timeout or a lost connection, where each read again would wait as long again)."""
    if _waited(err):
        first = jobs[0]
        blocks = sorted(first.blocks)
        return ChunkReadError(
            f"reading chunks {blocks[:10]} of array {first.name} failed: {type(err).__name__}: {err} (a timeout "
            "or a lost connection: the store did not answer)",
            array=first.name,
            chunk=blocks[0],
            samples=first.source.block_range(blocks[0]),
        )
    for job in jobs:
        for b, parts in sorted(job.blocks.items()):
            graph, task = _block_task(job.source, b)
            key = (f"daskfeed-locate-{uuid.uuid4().hex}", b)
            graph[key] = (functools.partial(_select, parts=parts), task)
            try:
                scheduler.get(graph, [key])
            except Exception as failed:
                start, stop = job.source.block_range(b)
                return ChunkReadError(
                    f"reading array {job.name} chunk {b} (samples {start}-{stop - 1}) failed: "
                    f"{type(failed).__name__}: {failed}",
                    array=job.name,
                    chunk=b,
                    samples=(start, stop),
                )
    first = jobs[0]
    blocks = sorted(first.blocks)
    return ChunkReadError(
        f"reading chunks {blocks[:10]} of array {first.name} failed with {type(err).__name__}: {err}; read "
        "again one chunk at a time, every chunk succeeded, so the failure did not repeat",
        array=first.name,
        chunk=blocks[0],
        samples=first.source.block_range(blocks[0]),
    )

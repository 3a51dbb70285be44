"""Reads through a dask task graph: zarr arrays the fast path does not take, dask computations, and any read on
a cluster. One graph per window (never one per batch); each task writes its block's rows into the buffer, or on a
cluster returns them to be copied in as they arrive."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from dask.optimization import cull

from daskfeed._compat import buffer_prototype
from daskfeed.errors import ChunkReadError, DaskfeedError
from daskfeed.read.failure import read_failed, waited
from daskfeed.read.rows import BlockSource, ReadJob, Rows, rows_at
from daskfeed.read.runner import LAST, GraphRunner

__all__ = ["NoWorkers", "locate_failure", "read_graph"]

#: A read waiting on a cluster checks this often whether the loader closed or the cluster lost its workers.
REMOTE_WAIT_SLICE_S = 0.5
#: Chunks read whole into consecutive rows are read with one zarr call of up to this many decoded bytes.
RUN_BYTES = 2**62


def _select(data: Any, *, parts: list[Rows], base: int) -> list[np.ndarray]:
    """Each part's rows of ``data`` (samples from ``base`` on)."""
    return [data[p.local(base)] for p in parts]


def _read_zarr(job: ReadJob, parts: list[Rows]) -> None:
    """Decode what ``parts`` need of one zarr chunk, straight into the buffer when the rows are contiguous."""
    array = job.source.zarr
    if len(parts) == 1 and parts[0].keep is None and job.scatter is None:
        p = parts[0]
        out = buffer_prototype().nd_buffer.from_numpy_array(job.buffer[p.at : p.at + p.count])
        array.get_basic_selection(slice(p.start, p.stop), out=out)
        return
    lo, hi = min(p.start for p in parts), max(p.stop for p in parts)
    job.put(parts, array[lo:hi], lo)


def _read_zarr_run(job: ReadJob, start: int, stop: int, at: int) -> None:
    """Decode samples ``[start, stop)`` of a zarr array, across chunks, straight into ``buffer[at:]``.

    One call for many chunks lets zarr fetch and decode them concurrently.
    """
    out = buffer_prototype().nd_buffer.from_numpy_array(job.buffer[at : at + stop - start])
    job.source.zarr.get_basic_selection(slice(start, stop), out=out)


def _zarr_runs(job: ReadJob) -> list[tuple[int, int, int] | int]:
    """Blocks read whole into consecutive rows merged into ``(start, stop, at)`` runs; other blocks as they are.

    :data:`RUN_BYTES` bounds a run; it is so high that no run is split: zarr decodes a run's chunks concurrently.
    """
    source, blocks = job.source, job.blocks
    out: list = []
    run: list | None = None
    for b in sorted(blocks):
        parts = blocks[b]
        start, stop = source.block_range(b)
        p = parts[0]
        whole = len(parts) == 1 and p.keep is None and p.start == start and p.stop == stop
        if not whole:
            run = None
            out.append(b)
            continue
        follows = run is not None and run[1] == start and run[2] + (start - run[0]) == p.at
        if follows and (stop - run[0]) * source.row_bytes <= RUN_BYTES:
            run[1] = stop
            continue
        run = [start, stop, p.at]
        out.append(run)
    return [tuple(r) if isinstance(r, list) else r for r in out]


def _block_task(source: BlockSource, block: int) -> tuple[dict, Any]:
    """The graph and the task (or key) that compute ``block`` of ``source``, for work done elsewhere."""
    if source.zarr is not None:  # the zarr array travels; its chunk is read where the task runs
        return {}, (source.zarr.__getitem__, slice(*source.block_range(block)))
    return cull(source.graph, [source.keys[block]])[0], source.keys[block]


def _graph(jobs: list[ReadJob], local: bool) -> tuple[dict, list, list]:
    """One graph for all jobs: a task per block (or run of whole zarr chunks) that writes its rows into the
    buffer (``local``) or returns them.

    Jobs and parts are bound with ``functools.partial``, so dask never looks inside them.
    """
    token = f"daskfeed-read-{uuid.uuid4().hex}"  # unique across processes that share a cluster
    graph: dict = {}
    places: list = []
    for j, job in enumerate(jobs):
        source, blocks = job.source, job.blocks
        if local and source.zarr is not None:  # zarr decodes straight into the buffer, without dask's graph
            for run in _zarr_runs(job) if job.scatter is None else list(blocks):
                if isinstance(run, int):
                    graph[(token, j, "block", run)] = (functools.partial(_read_zarr, job, blocks[run]),)
                else:
                    graph[(token, j, "run", run[0])] = (functools.partial(_read_zarr_run, job, *run),)
            continue
        for b, parts in blocks.items():
            sub, task = _block_task(source, b)
            graph.update(sub)
            base = int(source.bounds[b])
            if local:
                write = functools.partial(job.put, parts, base=base)
            else:
                write = functools.partial(_select, parts=parts, base=base)
            graph[(token, j, "block", b)] = (write, task)
            places.append((job, parts))
    outs = [key for key in graph if isinstance(key, tuple) and key[0] == token]
    return graph, outs, places


def read_graph(jobs: list[ReadJob], runner: GraphRunner, rank: tuple = LAST) -> None:
    """Read ``jobs`` with one dask computation: in this process (tasks write into the buffers; on daskfeed's
    threads the lowest ``rank`` first), or elsewhere (rows come back and are copied in as they arrive)."""
    if runner.shared_memory:
        graph, outs, _ = _graph(jobs, local=True)
        runner.get(graph, outs, rank)
        return
    graph, outs, places = _graph(jobs, local=False)

    def place(i: int, values: list[np.ndarray]) -> None:
        job, parts = places[i]
        for p, value in zip(parts, values):
            job.buffer[rows_at(job.scatter, p.at, len(value))] = value

    if runner.client is None:
        for i, values in enumerate(runner.get(graph, outs, rank)):
            place(i, values)
        return
    futures = runner.client.get(graph, outs, sync=False)
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for future, values in _as_done(futures, runner):
            place(index[future.key], values)
    finally:
        with contextlib.suppress(Exception):  # best effort: a client that lost its scheduler cannot cancel
            runner.client.cancel(futures)


class NoWorkers(Exception):
    """A cluster without workers for longer than the loader's ``no_workers_timeout``."""


def _as_done(futures: list, runner: GraphRunner) -> Iterator[tuple[Any, Any]]:
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
            if runner.closed.is_set():
                raise DaskfeedError("the loader was closed while chunks were being read on the cluster")
            if runner.client.status != "running" or runner.client.nthreads():
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= runner.no_workers_timeout:
                raise NoWorkers(
                    f"the dask cluster ({runner.client.scheduler.address}) has had no workers for "
                    f"{runner.no_workers_timeout:g} s while chunk reads waited (scaled to zero, or its workers "
                    "died and were not restarted); start workers, or raise no_workers_timeout"
                )
        idle_since = None
        yield future, values


def locate_failure(jobs: list[ReadJob], runner: GraphRunner, err: Exception) -> ChunkReadError:
    """Find the array and chunk whose read failed, by reading the blocks again one at a time (not after a
    timeout or a lost connection, where each read again would wait as long again)."""
    first = jobs[0]
    blocks = sorted(first.blocks)
    samples = first.source.block_range(blocks[0])
    if waited(err):
        why = " (a timeout or a lost connection: the store did not answer)"
        return read_failed(first.name, blocks, samples, f"failed: {type(err).__name__}: {err}{why}")
    for job in jobs:
        for b, parts in sorted(job.blocks.items()):
            graph, task = _block_task(job.source, b)
            key = (f"daskfeed-locate-{uuid.uuid4().hex}", b)
            graph[key] = (functools.partial(_select, parts=parts, base=int(job.source.bounds[b])), task)
            try:
                runner.get(graph, [key])
            except Exception as failed:
                return read_failed(job.name, [b], job.source.block_range(b), "failed: ", failed)
    return read_failed(
        first.name,
        blocks,
        samples,
        f"failed with {type(err).__name__}: {err}; read again one chunk at a time, every chunk succeeded, so the "
        "failure did not repeat",
    )

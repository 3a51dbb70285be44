"""The read path: from the plan's reads to rows in the loader's buffers, with one entry, :func:`read`.

- :mod:`~daskfeed.read.rows`: the one record, :class:`Rows` (these rows of this chunk go here), at every level
  (the plan's read of a chunk, a dask block's part of it, a stored zarr chunk's part); :class:`ReadJob` (one
  array into one buffer) and :class:`BlockSource` (the array as the read path sees it).
- :mod:`~daskfeed.read.codec`: how a zarr array's stored chunks decode without zarr's event loop, self-checked.
- :mod:`~daskfeed.read.chunks`: the fast path, stored chunks read and decoded on daskfeed's threads.
- :mod:`~daskfeed.read.graph`: every other read, through one dask graph per call (here or on a cluster).
- :mod:`~daskfeed.read.runner`: daskfeed's threads and the ``scheduler=`` knob resolved (``GraphRunner``).
- :mod:`~daskfeed.read.failure`: where every :class:`daskfeed.ChunkReadError` is built.
"""

from __future__ import annotations

from daskfeed.errors import DaskfeedError
from daskfeed.read.chunks import chunk_targets, read_chunks
from daskfeed.read.failure import read_failed
from daskfeed.read.graph import NoWorkers, locate_failure, read_graph
from daskfeed.read.rows import BlockSource, ReadJob, Rows
from daskfeed.read.runner import DEFAULT_CONCURRENCY, LAST, GraphRunner, WorkerPool, usable_cores

__all__ = [
    "DEFAULT_CONCURRENCY",
    "BlockSource",
    "GraphRunner",
    "ReadJob",
    "Rows",
    "WorkerPool",
    "read",
    "usable_cores",
]


def read(jobs: list[ReadJob], runner: GraphRunner, rank: tuple = LAST) -> int:
    """Read every job's rows into its buffer; returns the bytes of the blocks decoded.

    ``rank``: ``(epoch, window)`` of the window this read makes. On daskfeed's threads and among the requests in
    flight, the work of the lowest rank goes first, so the window a batch waits for is not held up by windows
    read ahead of it.

    In this process, zarr arrays the fast path takes are read by :func:`~daskfeed.read.chunks.read_chunks`
    and the rest by one dask computation; on a cluster everything is one dask computation. A failure is a
    :class:`daskfeed.ChunkReadError` naming the array and chunk (built in :mod:`~daskfeed.read.failure`).
    """
    jobs = [job for job in jobs if job.reads]
    if not jobs:
        return 0
    try:
        fast = [job for job in jobs if runner.shared_memory and job.source.codec is not None]
        targets = [target for job in fast for target in chunk_targets(job)]
        if targets:
            read_chunks(targets, runner.submit, runner.closed, runner.in_flight, rank)
        others = [job for job in jobs if job not in fast]
        if others:
            read_graph(others, runner, rank)
    except DaskfeedError:  # a ChunkReadError of the fast path, or closed while waiting
        raise
    except Exception as err:
        first = jobs[0]
        block = min(first.blocks)
        where = (first.name, [block], first.source.block_range(block))
        if isinstance(err, NoWorkers):
            raise read_failed(*where, f"failed: {err}") from None
        client = runner.client
        if client is not None and client.status != "running":  # no cluster to ask again, chunk by chunk
            why = f"failed because the dask cluster went away (client status {client.status!r}): "
            raise read_failed(*where, why, err) from err
        raise locate_failure(jobs, runner, err) from err
    spans = [(job.source, job.source.block_range(b)) for job in jobs for b in job.blocks]
    return sum((stop - start) * source.row_bytes for source, (start, stop) in spans)

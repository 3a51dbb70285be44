"""The fast path: zarr's stored chunks read on daskfeed's threads (local files) or fetched with many requests in
flight (other stores), decoded on every core straight into the buffers."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any, NamedTuple

import numpy as np

from daskfeed import _compat
from daskfeed.errors import ChunkReadError, DaskfeedError
from daskfeed.read.failure import read_failed, timeout_knob
from daskfeed.read.rows import ReadJob, Rows, rows_at
from daskfeed.read.runner import LAST, Slots

__all__ = ["ChunkTarget", "chunk_targets", "read_chunks"]

#: A read waiting for its chunks checks this often whether the loader was closed.
WAIT_SLICE_S = 0.1
#: Local chunks are decoded in tasks of about this many decoded bytes: a task per small chunk (labels of 8 KB)
#: would cost more in handing work to threads than in decoding.
TASK_BYTES = 2**21


class ChunkTarget(NamedTuple):
    """One stored chunk to read for a job, and the rows of it that go into the job's buffer."""

    job: ReadJob
    coords: tuple[int, ...]  # the chunk's grid coordinates
    puts: list[Rows]  # numbered by the stored chunk along axis 0
    block: int  # the job's block (dask chunk) the chunk is read for, for messages

    @property
    def key(self) -> str:
        return self.job.source.codec.key(self.coords)

    def failed(self, why: str, cause: BaseException | None = None) -> ChunkReadError:
        return read_failed(self.job.name, [self.block], self.job.source.block_range(self.block), why, cause)


def chunk_targets(job: ReadJob) -> list[ChunkTarget]:
    """The stored chunks ``job`` needs, each once, with the rows each of its parts takes from it.

    A block (dask chunk) may span several zarr chunks or part of one; chunks along the other axes each
    become a target of their own, so a block's decoding spreads over every core.
    """
    codec = job.source.codec
    step = codec.chunk_shape[0]
    puts: dict[int, list[Rows]] = {}
    block_of: dict[int, int] = {}
    for b, parts in job.blocks.items():
        for p in parts:
            for c in range(p.start // step, (p.stop - 1) // step + 1):
                part = p.within(c * step, (c + 1) * step, c)
                if part is not None:
                    puts.setdefault(c, []).append(part)
                    block_of.setdefault(c, b)
    across = [range(-(-s // c)) for s, c in zip(codec.shape[1:], codec.chunk_shape[1:])]
    return [
        ChunkTarget(job, (c, *rest), puts[c], block_of[c]) for c in sorted(puts) for rest in itertools.product(*across)
    ]


def _place(target: ChunkTarget, chunk: np.ndarray | None) -> None:
    """Write ``target``'s rows of a decoded chunk (or the fill value, for a chunk the store lacks)."""
    job, coords = target.job, target.coords
    codec = job.source.codec
    inner, outer = [], []
    for axis in range(1, len(codec.shape)):
        lo = coords[axis] * codec.chunk_shape[axis]
        hi = min(codec.shape[axis], lo + codec.chunk_shape[axis])
        inner.append(slice(0, hi - lo))
        outer.append(slice(lo, hi))
    base = coords[0] * codec.chunk_shape[0]
    for p in target.puts:
        into = (rows_at(job.scatter, p.at, p.count), *outer)
        job.buffer[into] = codec.fill if chunk is None else chunk[(p.local(base), *inner)]


def _fail(target: ChunkTarget, err: BaseException) -> ChunkReadError:
    codec = target.job.source.codec
    hint = f"; {timeout_knob(codec.read_timeout_given)}" if "timeout" in type(err).__name__.lower() else ""
    return target.failed(f"failed: {type(err).__name__}: {err} (stored chunk {target.key!r}){hint}")


def _timed_out(target: ChunkTarget) -> ChunkReadError:
    codec = target.job.source.codec
    return target.failed(
        f"timed out after {codec.read_timeout:g} s: the store did not deliver stored chunk {target.key!r} in that "
        f"time, retries included (read_timeout={codec.read_timeout:g}); {timeout_knob(codec.read_timeout_given)}"
    )


def _decode_into(target: ChunkTarget, raw: Any) -> None:
    try:
        _place(target, target.job.source.codec.decode(raw, target.coords))
    except Exception as err:
        raise _fail(target, err) from err


def _read_local(targets: list[ChunkTarget]) -> None:
    for target in targets:
        try:
            raw = target.job.source.codec.fetch_local(target.key)
        except Exception as err:
            raise _fail(target, err) from err
        _decode_into(target, raw)


def _tasks(targets: list[ChunkTarget]) -> list[list[ChunkTarget]]:
    """Consecutive targets grouped into tasks of about :data:`TASK_BYTES` decoded bytes."""
    tasks: list[list[ChunkTarget]] = []
    size = TASK_BYTES
    for target in targets:
        if size >= TASK_BYTES:
            tasks.append([])
            size = 0
        tasks[-1].append(target)
        size += target.job.source.codec.chunk_nbytes
    return tasks


def read_chunks(
    targets: list[ChunkTarget],
    submit: Callable[..., Future],
    closed: threading.Event,
    in_flight: Callable[[], Slots],
    rank: tuple = LAST,
) -> None:
    """Read every target: local files on ``submit``'s threads; other stores fetched through zarr's event loop,
    at most ``in_flight()``'s count of requests at once, each chunk decoded on ``submit``'s threads as it
    arrives; the work of the lowest ``rank`` first (see :func:`daskfeed.read.read`). Raises
    :class:`ChunkReadError` naming the first chunk that failed, or :class:`DaskfeedError`
    when ``closed`` is set while waiting."""
    local = [t for t in targets if t.job.source.codec.root is not None]
    futures = [submit(_read_local, task, rank=rank) for task in _tasks(local)]
    remote = [t for t in targets if t.job.source.codec.root is None]
    decodes: list[Future] = []  # of chunks fetched from other stores
    try:
        if remote:
            _compat.run_on_zarr_loop(_fetch_all(remote, submit, closed, in_flight(), decodes, rank))
        _wait(futures, closed)
    finally:
        futures += decodes
        for future in futures:  # after a failure: what has not started never will
            future.cancel()
        wait(futures)  # and no thread goes on writing into a buffer the loader may give to another window


def _wait(futures: list[Future], closed: threading.Event) -> None:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=WAIT_SLICE_S, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()
        if closed.is_set():
            raise DaskfeedError("the loader was closed while chunks were being read")


async def _fetch_all(
    targets: list[ChunkTarget],
    submit: Callable[..., Future],
    closed: threading.Event,
    limit: Slots,
    decodes: list[Future],
    rank: tuple,
) -> None:
    async def get(target: ChunkTarget) -> Any:
        codec = target.job.source.codec
        try:
            return await codec.store.get(target.key, codec.prototype)
        except Exception as err:  # a ChunkReadError is no TimeoutError: only wait_for's own is one below
            raise _fail(target, err) from err

    async def one(target: ChunkTarget) -> None:
        timeout = target.job.source.codec.read_timeout
        async with limit.held(rank):  # the bound starts with the request, not while it waits for a place
            if timeout is None:
                raw = await get(target)
            else:
                # The whole fetch, every retry of the store's client included: each retry of s3fs / botocore
                # would wait its own per-request timeout again (many times read_timeout in all).
                try:
                    raw = await asyncio.wait_for(get(target), timeout)
                except TimeoutError as err:
                    raise _timed_out(target) from err
        decodes.append(submit(_decode_into, target, raw, rank=rank))
        await asyncio.wrap_future(decodes[-1])

    tasks = [asyncio.ensure_future(one(t)) for t in targets]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=WAIT_SLICE_S, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            if closed.is_set():
                raise DaskfeedError("the loader was closed while chunks were being read")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Reading zarr chunks on daskfeed's threads: bytes fetched (many requests in flight), decoded on every core."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from daskfeed.errors import ChunkReadError, DaskfeedError
from daskfeed.inputs import store_read_timeout

__all__ = ["ChunkCodec", "ChunkTarget", "read_chunks"]

#: A read waiting for its chunks checks this often whether the loader was closed.
WAIT_SLICE_S = 0.1
#: Local chunks are decoded in tasks of about this many decoded bytes: a task per small chunk (labels of 8 KB)
#: would cost more in handing work to threads than in decoding.
TASK_BYTES = 2**21


class ChunkCodec:
    """How to read one zarr array's stored chunks without zarr's event loop: keys, codecs, fill value.

    zarr 3.1 runs every synchronous read, from every thread, through one event-loop thread that does the
    copies and part of the decoding, so reads stop scaling at about one core. Here the stored bytes are
    fetched (read from the file on a local store; through the store's own ``get``, many at once, on any
    other) and decoded with the array's own codecs (their ``_decode_sync``, zarr's ``SupportsSyncCodec``)
    on daskfeed's threads, straight into the window buffer.

    :meth:`of` gives None for what it cannot decode this way (sharded arrays, irregular grids, codecs
    without a synchronous decode, object dtypes); those are read through zarr.

    A fetch from a store that is not a local directory may take at most :attr:`read_timeout` seconds, retries
    of the store's client included: the ``read_timeout`` :func:`daskfeed.open_zarr` was given for the store, or
    :data:`daskfeed.inputs.DEFAULT_READ_TIMEOUT` for a store opened with zarr directly.
    """

    def __init__(self, array: Any):
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import LocalStore

        meta = array.metadata
        self.name = array.path
        self.shape = tuple(int(s) for s in array.shape)
        self.chunk_shape = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.chunk_nbytes = self.dtype.itemsize * int(np.prod(self.chunk_shape))
        self.fill = np.asarray(array.fill_value if array.fill_value is not None else 0, dtype=self.dtype)
        self.store = array.store
        self.prefix = f"{array.path}/" if array.path else ""
        #: The directory of a plain local store: chunk files are read with ``open`` on the decoding thread.
        self.root = Path(self.store.root) if type(self.store) is LocalStore else None
        self.prototype = default_buffer_prototype()
        #: Seconds one fetch of a chunk may take (None: no bound), and whether open_zarr's read_timeout set it.
        self.read_timeout, self.read_timeout_given = store_read_timeout(self.store)
        self.format = meta.zarr_format
        self._encode_key = meta.encode_chunk_key
        if self.format == 3:
            from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
            from zarr.core.array_spec import ArrayConfig, ArraySpec

            spec = ArraySpec(
                shape=self.chunk_shape,
                dtype=meta.dtype,
                fill_value=meta.fill_value,
                config=ArrayConfig(order="C", write_empty_chunks=False),
                prototype=self.prototype,
            )
            self._aa = []  # (codec, the spec it decodes to)
            for codec in meta.codecs:
                if isinstance(codec, ArrayArrayCodec):
                    self._aa.append((codec, spec))
                    spec = codec.resolve_metadata(spec)
                elif isinstance(codec, ArrayBytesCodec):
                    self._ab = (codec, spec)
                    spec = codec.resolve_metadata(spec)
                elif isinstance(codec, BytesBytesCodec):
                    self._bb = [*getattr(self, "_bb", []), (codec, spec)]
            self._bb = getattr(self, "_bb", [])
        else:
            self._compressor, self._filters, self._order = meta.compressor, list(meta.filters or ()), meta.order
            self._stored = np.dtype(meta.dtype.to_native_dtype())

    @classmethod
    def of(cls, array: Any) -> ChunkCodec | None:
        """The codec reader of ``array``, or None when zarr must read it."""
        try:
            from zarr.abc.codec import SupportsSyncCodec
            from zarr.core.chunk_grids import RegularChunkGrid
        except ImportError:  # an older zarr: read through zarr
            return None
        meta = getattr(array, "metadata", None)
        if meta is None or np.dtype(array.dtype).kind not in "biufcmM" or not array.shape:
            return None
        if meta.zarr_format == 3:
            if array.shards is not None or not isinstance(meta.chunk_grid, RegularChunkGrid):
                return None
            if not all(isinstance(c, SupportsSyncCodec) for c in meta.codecs):
                return None
            from zarr.codecs import BytesCodec

            if not any(isinstance(c, BytesCodec) for c in meta.codecs):
                return None
        elif meta.zarr_format != 2 or np.dtype(meta.dtype.to_native_dtype()).hasobject:
            return None
        return cls(array)

    def key(self, coords: tuple[int, ...]) -> str:
        return self.prefix + self._encode_key(coords)

    def fetch_local(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def decode(self, raw: Any) -> np.ndarray | None:
        """A stored chunk (bytes or a zarr Buffer) as an array of the full chunk shape; None when absent."""
        if raw is None:
            return None
        if self.format == 3:
            data = raw if not isinstance(raw, bytes) else self.prototype.buffer.from_bytes(raw)
            for codec, spec in reversed(self._bb):
                data = codec._decode_sync(data, spec)
            codec, spec = self._ab
            data = codec._decode_sync(data, spec)
            for codec, spec in reversed(self._aa):
                data = codec._decode_sync(data, spec)
            return data.as_numpy_array()
        data = raw.to_bytes() if not isinstance(raw, bytes) else raw
        if self._compressor is not None:
            data = self._compressor.decode(data)
        for codec in reversed(self._filters):
            data = codec.decode(data)
        return np.frombuffer(memoryview(data), self._stored).reshape(self.chunk_shape, order=self._order)


class ChunkTarget(NamedTuple):
    """One stored chunk to read, and where its rows go."""

    name: str  # the array's name, for messages
    codec: ChunkCodec
    coords: tuple[int, ...]  # the chunk's grid coordinates
    buffer: np.ndarray
    #: (chunk-local rows: a slice or sorted indices, the buffer row the first of them goes to)
    puts: list[tuple[slice | np.ndarray, int]]
    block: int  # the read's block (dask chunk) number, for messages
    samples: tuple[int, int]  # the block's samples, for messages
    scatter: np.ndarray | None = None  # where each row goes, as ``ReadJob.scatter``


def _place(target: ChunkTarget, chunk: np.ndarray | None) -> None:
    """Write ``target``'s rows of a decoded chunk (or the fill value, for a chunk the store lacks)."""
    codec, coords = target.codec, target.coords
    inner, outer = [], []
    for axis in range(1, len(codec.shape)):
        lo = coords[axis] * codec.chunk_shape[axis]
        hi = min(codec.shape[axis], lo + codec.chunk_shape[axis])
        inner.append(slice(0, hi - lo))
        outer.append(slice(lo, hi))
    for rows, at in target.puts:
        count = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        into = (slice(at, at + count) if target.scatter is None else target.scatter[at : at + count], *outer)
        if chunk is None:
            target.buffer[into] = codec.fill
        else:
            target.buffer[into] = chunk[(rows, *inner)]


def _fail(target: ChunkTarget, err: BaseException) -> ChunkReadError:
    start, stop = target.samples
    key = target.codec.key(target.coords)
    hint = f"; {_timeout_knob(target.codec)}" if "timeout" in type(err).__name__.lower() else ""
    return ChunkReadError(
        f"reading array {target.name} chunk {target.block} (samples {start}-{stop - 1}) failed: "
        f"{type(err).__name__}: {err} (stored chunk {key!r}){hint}",
        array=target.name,
        chunk=target.block,
        samples=target.samples,
    )


def _timeout_knob(codec: ChunkCodec) -> str:
    """Which knob sets the bound on a chunk fetch, and how to change it."""
    if codec.read_timeout_given:
        return (
            "daskfeed.open_zarr(..., read_timeout=) sets this bound: raise it if big chunks need longer on a slow "
            "link, None waits forever"
        )
    return (
        "the store was not opened with daskfeed.open_zarr, so the default bound applies "
        "(daskfeed.inputs.DEFAULT_READ_TIMEOUT); open it with daskfeed.open_zarr(url, read_timeout=...) to change it"
    )


def _timed_out(target: ChunkTarget) -> ChunkReadError:
    start, stop = target.samples
    codec = target.codec
    return ChunkReadError(
        f"reading array {target.name} chunk {target.block} (samples {start}-{stop - 1}) timed out after "
        f"{codec.read_timeout:g} s: the store did not deliver stored chunk {codec.key(target.coords)!r} in that "
        f"time, retries included (read_timeout={codec.read_timeout:g}); {_timeout_knob(codec)}",
        array=target.name,
        chunk=target.block,
        samples=target.samples,
    )


def _decode_into(target: ChunkTarget, raw: Any) -> None:
    try:
        _place(target, target.codec.decode(raw))
    except Exception as err:
        raise _fail(target, err) from err


def _read_local(targets: list[ChunkTarget]) -> None:
    for target in targets:
        try:
            raw = target.codec.fetch_local(target.codec.key(target.coords))
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
        size += target.codec.chunk_nbytes
    return tasks


def read_chunks(
    targets: list[ChunkTarget],
    submit: Callable[..., Future],
    closed: threading.Event,
    in_flight: Callable[[], asyncio.Semaphore],
) -> None:
    """Read every target: local files on ``submit``'s threads; other stores fetched through zarr's event loop,
    at most ``in_flight()``'s count of requests at once, each chunk decoded on ``submit``'s threads as it
    arrives. Raises :class:`ChunkReadError` naming the first chunk that failed, or :class:`DaskfeedError`
    when ``closed`` is set while waiting."""
    futures = [submit(_read_local, task) for task in _tasks([t for t in targets if t.codec.root is not None])]
    remote = [t for t in targets if t.codec.root is None]
    decodes: list[Future] = []  # of chunks fetched from other stores
    try:
        if remote:
            from zarr.core.sync import sync

            sync(_fetch_all(remote, submit, closed, in_flight(), decodes))
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
    limit: asyncio.Semaphore,
    decodes: list[Future],
) -> None:
    async def get(target: ChunkTarget) -> Any:
        codec = target.codec
        try:
            return await codec.store.get(codec.key(target.coords), codec.prototype)
        except Exception as err:  # a ChunkReadError is no TimeoutError: only wait_for's own is one below
            raise _fail(target, err) from err

    async def one(target: ChunkTarget) -> None:
        timeout = target.codec.read_timeout
        async with limit:  # the bound starts with the request, not while it waits for a place in flight
            if timeout is None:
                raw = await get(target)
            else:
                # The whole fetch, every retry of the store's client included: each retry of s3fs / botocore
                # would wait its own per-request timeout again (many times read_timeout in all).
                try:
                    raw = await asyncio.wait_for(get(target), timeout)
                except asyncio.TimeoutError as err:
                    raise _timed_out(target) from err
        decodes.append(submit(_decode_into, target, raw))
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

"""How one zarr array's stored chunks are decoded without zarr's event loop, checked against zarr's own read."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from daskfeed import _compat
from daskfeed.errors import FastPathWarning, warn
from daskfeed.inputs import store_read_timeout

__all__ = ["ChunkCodec"]


class _Check:
    """The self-check's verdict for one array configuration (format, dtype, chunk shape, codecs), per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: None: no stored chunk compared yet; "": daskfeed's decode agreed with zarr's; else why it is off.
        self.verdict: str | None = None


_CHECKS: dict[str, _Check] = {}
_CHECKS_LOCK = threading.Lock()
_WARNED: set[tuple[str, str]] = set()  # (configuration, reason) warned about: each once per process


def _after_fork_in_child() -> None:
    """A child forked while a reading thread held a lock here would wait for it forever: new locks, and a check
    the parent had not finished is made again."""
    global _CHECKS_LOCK
    _CHECKS_LOCK = threading.Lock()
    for check in _CHECKS.values():
        check.lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _configuration(array: Any) -> str:
    """What a decode depends on, as text: the array's metadata document without its shape and attributes."""
    import json

    doc = dict(array.metadata.to_dict())
    for field in ("shape", "attributes", "dimension_names"):
        doc.pop(field, None)
    return json.dumps(doc, sort_keys=True, default=repr)


def _fast_path_off(where: str, reason: str, configuration: str) -> None:
    """Warn, once per reason and array configuration (or "") and process, that ``where`` is read through zarr,
    why, and on which zarr."""
    with _CHECKS_LOCK:
        if (configuration, reason) in _WARNED:
            return
        _WARNED.add((configuration, reason))
    warn(
        f"daskfeed's own chunk decoding is off for zarr array {where}: {reason} (zarr {_compat.zarr_version()}, "
        f"numpy {np.__version__}; daskfeed's decoding is checked on zarr {_compat.CHECKED_ZARR}). Its chunks are "
        "read through zarr instead: the same values, but zarr decodes on its one event-loop thread, so reading "
        "is slower. On one of those zarr releases, please report this to daskfeed with this message.",
        FastPathWarning,
    )


def _where(array: Any) -> str:
    return repr(str(getattr(array, "store_path", None) or array.path))


class ChunkCodec:
    """How to read one zarr array's stored chunks without zarr's event loop: keys, codecs, fill value.

    zarr 3 runs every synchronous read, from every thread, through one event-loop thread that does the
    copies and part of the decoding, so reads stop scaling at about one core. Here the stored bytes are
    fetched (read from the file on a local store; through the store's own ``get``, many at once, on any
    other) and decoded with the array's own codecs (their ``_decode_sync``, zarr's ``SupportsSyncCodec``)
    on daskfeed's threads, straight into the window buffer. Every use of zarr's internals this needs is in
    :mod:`daskfeed._compat`, checked on the zarr releases pyproject.toml allows.

    :meth:`of` gives None for sharded arrays (zarr reads their inner chunks by byte range) and for dtypes that
    are not numbers, booleans or dates: zarr reads those. It also gives None, with a :class:`FastPathWarning`,
    when this zarr lacks what the decoding needs (a release before 3.1.6, a codec without a synchronous decode,
    a chunk grid that is not regular).

    A self-check guards the rest: the first stored chunk decoded for an array configuration (format, dtype,
    chunk shape, codecs) is decoded by zarr too, from the same stored bytes, through zarr's public read path
    (an in-memory copy of the array's metadata and of that one chunk, so the store is not read again), and
    the two are compared bit for bit. When they differ, or daskfeed's decode raises, that chunk and every later
    one of that configuration are decoded by zarr instead, with a :class:`FastPathWarning`; :meth:`of` then
    gives None for arrays of that configuration. The verdict is kept for the process.

    A fetch from a store that is not a local directory may take at most :attr:`read_timeout` seconds, retries
    of the store's client included: the ``read_timeout`` :func:`daskfeed.open_zarr` was given for the store, or
    :data:`daskfeed.inputs.DEFAULT_READ_TIMEOUT` for a store opened with zarr directly.
    """

    def __init__(self, array: Any):
        meta = array.metadata
        self.name = array.path
        self.where = _where(array)
        self.shape = tuple(int(s) for s in array.shape)
        self.chunk_shape = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.chunk_nbytes = self.dtype.itemsize * int(np.prod(self.chunk_shape))
        self.fill = np.asarray(array.fill_value if array.fill_value is not None else 0, dtype=self.dtype)
        self.store = array.store
        self.prefix = f"{array.path}/" if array.path else ""
        #: The directory of a plain local store: chunk files are read with ``open`` on the decoding thread.
        self.root = _compat.local_root(self.store)
        self.prototype = _compat.buffer_prototype()
        #: Seconds one fetch of a chunk may take (None: no bound), and whether open_zarr's read_timeout set it.
        self.read_timeout, self.read_timeout_given = store_read_timeout(self.store)
        self.format = meta.zarr_format
        self._metadata = meta
        self._encode_key = _compat.chunk_key_encoder(meta)
        if self.format == 3:
            self._aa, self._ab, self._bb = _compat.codec_chain(meta, self.chunk_shape, self.prototype)
        else:
            self._compressor, self._filters, self._order, self._stored = _compat.v2_codecs(meta)
        self._configuration = _configuration(array)
        with _CHECKS_LOCK:
            self._check = _CHECKS.setdefault(self._configuration, _Check())

    @classmethod
    def of(cls, array: Any) -> ChunkCodec | None:
        """The codec reader of ``array``, or None when zarr must read it (see the class's description)."""
        meta = getattr(array, "metadata", None)
        if meta is None or np.dtype(array.dtype).kind not in "biufcmM" or not array.shape:
            return None
        if meta.zarr_format not in (2, 3):
            return None
        try:
            if meta.zarr_format == 3 and not _compat.regular_grid(meta):
                raise _compat.Unavailable("its chunk grid is not regular (daskfeed decodes regular grids only)")
            if array.shards is not None:
                return None  # zarr reads a shard's inner chunks by byte range: better than whole shards here
            codec = cls(array)
        except Exception as err:  # _compat.Unavailable, or a zarr internal that moved: read through zarr
            reason = str(err) if isinstance(err, _compat.Unavailable) else f"{type(err).__name__}: {err}"
            _fast_path_off(_where(array), reason, "")  # about zarr or a codec, not this array: once per process
            return None
        if codec._check.verdict:  # an array of this configuration disagreed already (and was warned about)
            return None
        return codec

    def key(self, coords: tuple[int, ...]) -> str:
        return self.prefix + self._encode_key(coords)

    def fetch_local(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def decode(self, raw: Any, coords: tuple[int, ...] | None = None) -> np.ndarray | None:
        """A stored chunk (bytes or a zarr Buffer) as an array of the full chunk shape; None when absent.

        ``coords``, the chunk's grid coordinates, let the first stored chunk of a configuration be checked
        against zarr's own read (see the class's description).
        """
        if raw is None:
            return None
        check = self._check
        if check.verdict == "" or coords is None:
            return self._decode(raw)
        if check.verdict:
            return self._decode_by_zarr(raw, coords)
        with check.lock:  # the first decode of this configuration: compared with zarr's; the others wait
            if check.verdict is None:
                check.verdict, chunk = self._compare(raw, coords)
                if check.verdict:
                    _fast_path_off(self.where, check.verdict, self._configuration)
                return chunk
        return self.decode(raw, coords)

    def _decode(self, raw: Any) -> np.ndarray:
        if self.format == 3:
            data = raw if not isinstance(raw, bytes) else self.prototype.buffer.from_bytes(raw)
            for codec, spec in reversed(self._bb):
                data = _compat.decode_sync(codec, data, spec)
            codec, spec = self._ab
            data = _compat.decode_sync(codec, data, spec)
            for codec, spec in reversed(self._aa):
                data = _compat.decode_sync(codec, data, spec)
            return data.as_numpy_array()
        data = raw.to_bytes() if not isinstance(raw, bytes) else raw
        if self._compressor is not None:
            data = self._compressor.decode(data)
        for codec in reversed(self._filters):
            data = codec.decode(data)
        return np.frombuffer(memoryview(data), self._stored).reshape(self.chunk_shape, order=self._order)

    def _region(self, coords: tuple[int, ...]) -> tuple[slice, ...]:
        """The chunk's part of the array (smaller than the chunk at the array's far edges)."""
        return tuple(
            slice(c * k, min(s, (c + 1) * k)) for c, k, s in zip(coords, self.chunk_shape, self.shape, strict=True)
        )

    def _decode_by_zarr(self, raw: Any, coords: tuple[int, ...]) -> np.ndarray:
        """zarr's own read of one stored chunk, from its bytes: an in-memory array with this array's metadata
        and that one chunk, read with ``zarr.open_array(...)[region]`` (full chunk shape, fill beyond the edge)."""
        import zarr

        docs = dict(self._metadata.to_buffer_dict(self.prototype))
        docs[self._encode_key(coords)] = raw if not isinstance(raw, bytes) else self.prototype.buffer.from_bytes(raw)
        copy = zarr.open_array(zarr.storage.MemoryStore(docs, read_only=True), mode="r")
        chunk = np.full(self.chunk_shape, self.fill, dtype=self.dtype)
        region = self._region(coords)
        chunk[tuple(slice(0, r.stop - r.start) for r in region)] = copy[region]
        return chunk

    def _compare(self, raw: Any, coords: tuple[int, ...]) -> tuple[str, np.ndarray]:
        """Why daskfeed's decode of a stored chunk differs from zarr's own (the empty string when it does not),
        and the chunk: daskfeed's decode when they agree, zarr's when not."""
        key = self.key(coords)
        try:
            ours = self._decode(raw)
        except Exception as err:
            try:
                theirs = self._decode_by_zarr(raw, coords)
            except Exception:
                raise err from None  # zarr fails too: the stored chunk is damaged, and the read says so
            return f"decoding stored chunk {key!r} raised {type(err).__name__}: {err}", theirs
        theirs = self._decode_by_zarr(raw, coords)
        inside = tuple(slice(0, r.stop - r.start) for r in self._region(coords))  # beyond the edge: padding
        if ours.shape != self.chunk_shape or not _same(np.asarray(ours, self.dtype)[inside], theirs[inside]):
            return f"daskfeed's decode of stored chunk {key!r} differs from zarr's own read of the same bytes", theirs
        return "", ours


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Equal bit for bit, or (floats) equal with NaN where the other has NaN."""
    return ours.tobytes() == theirs.tobytes() or (
        ours.dtype.kind in "fc" and np.array_equal(ours, theirs, equal_nan=True)
    )

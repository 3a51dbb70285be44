"""Every use of another library's internals that daskfeed makes, each checked on a range of versions.

zarr: the fast path (:mod:`daskfeed.read.codec`, :mod:`daskfeed.read.chunks`) reads stored chunks on daskfeed's
threads instead of zarr's one event-loop thread. That needs a few things zarr does not document as public API.
dask, Keras, TensorFlow and Python's ``warnings``: one use each, below their own heading. They all live here, so
a new release of any of them is checked in one file. Each use says which releases it was checked on and what
replaces it when it changes. A zarr use that fails raises :class:`Unavailable`, whose message says why;
:mod:`daskfeed.read.codec` then warns and reads through zarr.

Checked (tests/test_decode.py) on zarr 3.1.6 (the newest zarr for Python 3.11), 3.2.0, 3.2.1, 3.3.0, 3.4.0, 3.4.1
and 3.4.2, with numpy 2.0, 2.4 and 2.5. zarr 3.1.0 - 3.1.5 lack the synchronous codec decode: read through zarr.
The others: dask 2026.8.0, Keras 3.15.1, TensorFlow 2.20 (what CI installs), Python 3.11 - 3.13.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKED_ZARR",
    "TF_ERROR_FILES",
    "KerasBackupSaved",
    "Unavailable",
    "buffer_prototype",
    "chunk_key_encoder",
    "codec_chain",
    "dask_keys",
    "dask_threaded_get",
    "decode_sync",
    "from_zarr_array",
    "local_root",
    "regular_grid",
    "run_on_zarr_loop",
    "show_warning",
    "v2_codecs",
    "zarr_version",
]

#: The zarr releases the uses below were checked on; pyproject.toml allows this range and no other.
CHECKED_ZARR = "3.1.6 to 3.4.2"


class Unavailable(Exception):
    """daskfeed's own decoding cannot be used with this zarr or this array; the message says why."""


@functools.cache
def zarr_version() -> str:
    """The installed zarr's version, for messages."""
    import zarr

    return str(zarr.__version__)


def buffer_prototype() -> Any:
    """zarr's default CPU buffer prototype, with which stores return stored bytes.

    Public: ``zarr.buffer.default_buffer_prototype`` (zarr 3.1.0 on; checked 3.1.6 - 3.4.2). zarr 3.0 had it only
    in the private ``zarr.core.buffer``, which 3.4 still has.
    """
    from zarr.buffer import default_buffer_prototype

    return default_buffer_prototype()


def local_root(store: Any) -> Path | None:
    """The directory of a plain local store (chunk files are then read with ``open``); None for any other store.

    Public: ``zarr.storage.LocalStore`` and its ``root`` (checked 3.1.6 - 3.4.2). A subclass or a wrapper may
    change what a read returns (latency, counting, caching), so only the exact class counts.
    """
    from zarr.storage import LocalStore

    return Path(store.root) if type(store) is LocalStore else None


def regular_grid(metadata: Any) -> bool:
    """Whether a zarr v3 array's chunk grid is regular (every chunk the same shape).

    Read from the grid's JSON form, which the zarr v3 specification defines (``{"name": "regular", ...}``),
    rather than from its class: zarr 3.1 has ``zarr.core.chunk_grids.RegularChunkGrid``; zarr 3.2 removed that
    class for ``zarr.core.metadata.v3.RegularChunkGridMetadata`` and zarr 3.4 adds ``"rectilinear"`` grids (opt-in:
    ``zarr.config`` ``array.rectilinear_chunks``). ``ArrayV3Metadata.chunk_grid.to_dict()`` checked 3.1.6 - 3.4.2.
    """
    return metadata.chunk_grid.to_dict().get("name") == "regular"


def codec_chain(metadata: Any, chunk_shape: tuple[int, ...], prototype: Any) -> tuple[list, tuple, list]:
    """A zarr v3 array's codecs, split as zarr applies them, each with the spec of the data it decodes to.

    Returns ``(array_to_array, array_to_bytes, bytes_to_bytes)``: lists of ``(codec, spec)`` and one pair.
    Raises :class:`Unavailable` when a codec has no synchronous decode.

    - ``zarr.abc.codec.ArrayArrayCodec`` / ``ArrayBytesCodec`` / ``BytesBytesCodec`` and ``codec.resolve_metadata``:
      zarr's documented codec ABCs (checked 3.1.6 - 3.4.2).
    - ``zarr.abc.codec.SupportsSyncCodec``: a runtime-checkable protocol for ``_decode_sync``; first in zarr 3.1.6
      (3.1.0 - 3.1.5 decode only in coroutines on zarr's event loop: no fast path there), generic from 3.2
      (``isinstance`` works the same). zarr 3.4 adds ``_sync_capable``, False on a codec that has the method but
      cannot run it (a sharding codec with an async-only inner chain); zarr's own check
      (``zarr.abc.codec._codec_supports_sync``) reads it, and so do we.
    - ``zarr.core.array_spec.ArraySpec`` / ``ArrayConfig``: private; the same positional signature 3.1.6 - 3.4.2
      (3.4 adds keyword-only ``ArrayConfig`` fields with defaults). When zarr makes its synchronous chain public
      (3.4 has it as ``zarr.core.chunk_utils.ChunkTransform.decode_chunk``), that replaces this function and
      :func:`decode_sync`.
    """
    try:
        from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec, SupportsSyncCodec
    except ImportError as err:
        raise Unavailable(
            f"zarr {zarr_version()} has no synchronous codec decode (zarr.abc.codec.SupportsSyncCodec, first in "
            "zarr 3.1.6): upgrade zarr"
        ) from err
    from zarr.core.array_spec import ArrayConfig, ArraySpec

    for codec in metadata.codecs:
        if not isinstance(codec, SupportsSyncCodec) or not getattr(codec, "_sync_capable", True):
            raise Unavailable(f"codec {type(codec).__name__} has no synchronous decode (_decode_sync) in this zarr")
    spec = ArraySpec(
        shape=chunk_shape,
        dtype=metadata.dtype,
        fill_value=metadata.fill_value,
        config=ArrayConfig(order="C", write_empty_chunks=False),
        prototype=prototype,
    )
    aa: list = []
    ab: tuple | None = None
    bb: list = []
    for codec in metadata.codecs:
        if isinstance(codec, ArrayArrayCodec):
            aa.append((codec, spec))
        elif isinstance(codec, ArrayBytesCodec):
            ab = (codec, spec)
        elif isinstance(codec, BytesBytesCodec):
            bb.append((codec, spec))
        else:
            raise Unavailable(f"codec {type(codec).__name__} is none of zarr's three codec kinds")
        spec = codec.resolve_metadata(spec)
    if ab is None:
        raise Unavailable("the array has no array-to-bytes codec")
    return aa, ab, bb


def decode_sync(codec: Any, data: Any, spec: Any) -> Any:
    """One codec's synchronous decode: ``codec._decode_sync(data, spec)`` (private; checked 3.1.6 - 3.4.2).

    zarr's own synchronous pipeline calls the same method (3.4: ``ChunkTransform.decode_chunk``).
    """
    return codec._decode_sync(data, spec)


def chunk_key_encoder(metadata: Any) -> Callable[[tuple[int, ...]], str]:
    """The function from chunk grid coordinates to a stored chunk's key (below the array's path).

    ``ArrayV2Metadata.encode_chunk_key`` / ``ArrayV3Metadata.encode_chunk_key``: not in zarr's documented API;
    checked 3.1.6 - 3.4.2. A change shows as a self-check disagreement (a chunk zarr reads that we find absent).
    """
    return metadata.encode_chunk_key


def v2_codecs(metadata: Any) -> tuple[Any, list, str, Any]:
    """A zarr v2 array's ``(compressor, filters, order, stored numpy dtype)``: numcodecs objects and their order.

    ``ArrayV2Metadata.compressor`` / ``.filters`` / ``.order`` and ``.dtype.to_native_dtype()`` (``zarr.dtype``,
    public from 3.1): checked 3.1.6 - 3.4.2.
    """
    import numpy as np

    return metadata.compressor, list(metadata.filters or ()), metadata.order, np.dtype(metadata.dtype.to_native_dtype())


def zarr_loop() -> Any:
    """zarr's own event loop, or None when it has not started (or this zarr keeps it elsewhere).

    ``zarr.core.sync.loop``: private, a one-item list holding the loop; checked 3.1.6 - 3.4.2.
    """
    try:
        from zarr.core.sync import loop
    except ImportError:
        return None
    return loop[0] if isinstance(loop, list) and loop else None


def run_on_zarr_loop(coroutine: Coroutine) -> Any:
    """Run ``coroutine`` on zarr's own event loop (where its stores' clients live) and return its result.

    ``zarr.core.sync.sync``: private, zarr's bridge from synchronous code to that loop, the one ``zarr.Array``
    uses; checked 3.1.6 - 3.4.2. No public equivalent yet; if it goes, ``asyncio.run_coroutine_threadsafe`` on
    the loop zarr's stores were opened on replaces it.
    """
    from zarr.core.sync import sync

    return sync(coroutine)


# -- dask ---------------------------------------------------------------------------------------------------


def dask_threaded_get(submit: Callable, threads: int, graph: dict, keys: list) -> Any:
    """Compute ``keys`` of ``graph`` on daskfeed's own thread pool (``submit``, ``threads`` of them).

    ``dask.local.get_async`` with ``dask.threaded.pack_exception``: what ``dask.threaded.get`` runs on its own
    pool, given daskfeed's, so reads stop with the loader and a forked child makes its own. Documented by dask
    only as the engine of its local schedulers. Checked on dask 2024.1 - 2026.8. When it changes: a
    ``concurrent.futures`` executor passed as ``dask.compute(..., scheduler=pool)`` does the same, a little slower
    (it cannot be told the pool's size)."""
    import dask.local
    import dask.threaded

    return dask.local.get_async(submit, threads, graph, keys, pack_exception=dask.threaded.pack_exception)


def dask_keys(array: Any) -> list:
    """The keys of a dask array's blocks, flat, in C order (``dask.core.flatten`` of ``__dask_keys__()``).
    Checked on dask 2024.1 - 2026.8; when it goes, a recursive flatten of the nested lists does the same."""
    from dask.core import flatten

    return list(flatten(array.__dask_keys__()))


def from_zarr_array(array: Any) -> Any | None:
    """The zarr array of a graph ``da.from_zarr`` made, or None: two layers, the getters and a one-key layer
    named ``original-from-zarr-...`` that holds the zarr array (dask's layer names are not API). Checked on dask
    2024.1 - 2026.8. When it changes, this returns None and such arrays are read through dask, as any other
    (correct, slower): :func:`daskfeed.open_zarr` does not depend on it."""
    import numpy as np
    import zarr

    layers = array.dask.layers
    held = [
        value
        for name, layer in layers.items()
        if name.startswith("original-from-zarr-") and len(layer) == 1
        for value in layer.values()
    ]
    if len(layers) != 2 or len(held) != 1 or not isinstance(held[0], zarr.Array):
        return None
    z = held[0]
    return z if tuple(z.shape) == tuple(array.shape) and np.dtype(z.dtype) == array.dtype else None


# -- Keras --------------------------------------------------------------------------------------------------


class KerasBackupSaved:
    """Mixed into a subclass of ``keras.callbacks.BackupAndRestore``: calls ``self.saved()`` each time Keras has
    written its backup of the model (its private ``_save_model``, which every save goes through: at
    ``save_freq`` batches and at each epoch's end). Checked on Keras 3.0 - 3.15. When it changes, the test of a
    killed and restarted fit (tests/test_frontends.py) fails: save in ``on_train_batch_end`` after calling
    Keras's, with the same ``save_freq`` count."""

    def _save_model(self) -> None:
        super()._save_model()  # type: ignore[misc]
        self.saved()  # type: ignore[attr-defined]


# -- TensorFlow ---------------------------------------------------------------------------------------------

#: The files of TensorFlow's error classes (``tensorflow/python/framework/errors_impl.py``, re-exported from
#: ``errors.py``): their constructors run when TensorFlow's C++ turns a failed op into a Python error, where a
#: KeyboardInterrupt must not be raised (see :mod:`daskfeed.interrupts`). Checked on TensorFlow 2.16 - 2.20.
#: When they move, a Ctrl-C while ``fit`` waits for a stuck read ends as pybind11's ``MISMATCH`` error; the
#: Ctrl-C tests of tests/test_frontends.py say so.
TF_ERROR_FILES = ("errors_impl.py", "errors.py")


# -- Python -------------------------------------------------------------------------------------------------


def show_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    """Show a warning as Python's own ``warnings.showwarning`` does, from a replacement of it (which must not
    call the current one: itself). ``warnings._showwarnmsg_impl``, Python 3.6 - 3.13; when it goes,
    ``sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))`` does the same."""
    import warnings

    warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, *args, **kwargs))  # type: ignore[attr-defined]

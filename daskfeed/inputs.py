"""open_zarr, and turning x / y / sample_weight into named leaves aligned on one sample axis."""

from __future__ import annotations

import collections
import math
import numbers
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from daskfeed._compat import run_on_zarr_loop
from daskfeed.errors import DaskfeedWarning, InputError, InputTypeError, StoreError, warn

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "TENSOR_KINDS",
    "Inputs",
    "Leaf",
    "normalize_inputs",
    "open_zarr",
    "open_zarr_node",
    "store_read_timeout",
    "written_shuffled",
    "zarr_behind",
]

#: Kinds of numpy dtypes that TensorFlow takes as tensors: bool, ints, unsigned ints, floats, complex.
TENSOR_KINDS = "biufc"


# The zarr array behind each dask array that daskfeed made with from_zarr, by dask name (the name changes with
# any further dask work, so a hit means the dask array is exactly the zarr array). Bounded, oldest out first.
_ZARR_BY_NAME: collections.OrderedDict[str, Any] = collections.OrderedDict()
_ZARR_BY_NAME_MAX = 4096


def _from_zarr(array: Any) -> da.Array:
    out = da.from_zarr(array)
    _ZARR_BY_NAME[out.name] = array
    while len(_ZARR_BY_NAME) > _ZARR_BY_NAME_MAX:
        _ZARR_BY_NAME.popitem(last=False)
    return out


def zarr_behind(array: da.Array) -> Any | None:
    """The zarr array a dask array reads with nothing else on top: one daskfeed opened, or ``da.from_zarr(z)``
    of a zarr array (any chunks, array not inlined); else None."""
    found = _ZARR_BY_NAME.get(array.name)
    if found is None and array.name.startswith("from-zarr-"):
        found = _from_zarr_graph(array)
    return found


def _from_zarr_graph(array: da.Array) -> Any | None:
    """The zarr array of a graph ``da.from_zarr`` made: a layer of getters and the one-key layer that holds it."""
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


#: Seconds one chunk read from a store that is not a local directory may take, retries included, before it fails;
#: see :func:`open_zarr`. Also the bound for such stores opened with zarr directly, not through :func:`open_zarr`.
DEFAULT_READ_TIMEOUT = 120.0

# The read_timeout open_zarr was given for each store it opened (or was handed), by id(store): zarr's stores define
# __eq__ without __hash__, so a WeakKeyDictionary cannot hold them. An entry leaves when its store is collected.
_READ_TIMEOUTS: dict[int, tuple[weakref.ref, float | None]] = {}


def _set_read_timeout(store: Any, seconds: float | None) -> None:
    key = id(store)

    def forget(ref: weakref.ref, key: int = key) -> None:
        if _READ_TIMEOUTS.get(key, (None, None))[0] is ref:
            _READ_TIMEOUTS.pop(key, None)

    _READ_TIMEOUTS[key] = (weakref.ref(store, forget), seconds)


def store_read_timeout(store: Any) -> tuple[float | None, bool]:
    """The bound on one chunk read from ``store`` (seconds, retries included; None: no bound) and whether
    :func:`open_zarr` set it (``read_timeout=``); a store it did not open gets :data:`DEFAULT_READ_TIMEOUT`."""
    entry = _READ_TIMEOUTS.get(id(store))
    if entry is not None and entry[0]() is store:
        return entry[1], True
    return DEFAULT_READ_TIMEOUT, False


def _check_read_timeout(seconds: Any) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise InputTypeError(f"read_timeout must be a number of seconds or None, got {type(seconds).__name__}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InputError(f"read_timeout must be a positive number of seconds or None (wait forever), got {seconds!r}")
    return float(seconds)


def open_zarr(
    store: Any, *, storage_options: dict | None = None, read_timeout: float | None = DEFAULT_READ_TIMEOUT
) -> dict[str, da.Array] | da.Array:
    """Open a zarr store lazily, as dask arrays with one dask chunk per zarr chunk.

    Parameters
    ----------
    store : str, os.PathLike, zarr.Group or zarr.Array
        A local path, a URL fsspec understands (``"s3://bucket/train.zarr"``), or an open zarr object.
    storage_options : dict, optional
        Passed to fsspec for URLs (credentials, endpoint, ...).
    read_timeout : float or None, default 120
        Seconds the loader waits for one stored chunk, retries of the store's client included, before the read
        fails as a :class:`daskfeed.ChunkReadError` naming the array and chunk, so a store that stops answering
        is an error instead of a hang. ``None`` waits forever. For ``http(s)://`` and ``s3://`` URLs each request
        of the client gets this timeout too (a timeout set in ``storage_options`` wins there). A zarr object
        passed here gets the bound for its store; a remote array opened with zarr and never passed here is
        bounded by :data:`DEFAULT_READ_TIMEOUT`. Reading a URL's zarr metadata here is bounded the same way.
        Listing a group's members or a store's chunks, and the reads zarr makes itself (sharded arrays, codecs
        without a synchronous decode), are bounded only by the client's per-request timeout and its retries.

    Returns
    -------
    dict of str to dask.array.Array, or dask.array.Array
        A group gives a dict of its arrays, by name (arrays in sub-groups are named ``"sub/name"``);
        an array gives one dask array.

    Raises
    ------
    StoreError
        If ``store`` does not exist, cannot be reached, needs a package that is not installed (``s3fs`` for
        ``s3://``) or is not a zarr store, or a group holds no array; the message starts with the cause.
    InputError
        If ``read_timeout`` is not a positive number of seconds or None.

    Examples
    --------
    >>> import numpy as np, zarr, daskfeed
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> root.create_array("x", data=np.zeros((10, 3), "f4"), chunks=(4, 3))  # doctest: +ELLIPSIS
    <Array memory://... shape=(10, 3) dtype=float32>
    >>> arrays = daskfeed.open_zarr(root)
    >>> arrays["x"].chunks
    ((4, 4, 2), (3,))
    """
    import zarr

    node, arrays = open_zarr_node(store, storage_options=storage_options, read_timeout=read_timeout)
    if isinstance(store, (zarr.Array, zarr.Group)):  # opened by the caller: the whole-read bound still applies
        _set_read_timeout(store.store, read_timeout)
    if arrays is None:
        return _from_zarr(node)
    return {name: _from_zarr(arr) for name, arr in arrays.items()}


def _with_timeout(location: str, options: dict | None, seconds: float | None) -> dict | None:
    """``storage_options`` with a read timeout for the protocols whose clients take one (unless already set)."""
    options = dict(options or {})
    protocol = location.split("://", 1)[0].lower()
    if seconds is None:
        return options or None
    if protocol in ("http", "https"):
        import aiohttp

        client = dict(options.get("client_kwargs", {}))
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds))
        options["client_kwargs"] = client
    elif protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs", {}))
        config.setdefault("read_timeout", seconds)
        config.setdefault("connect_timeout", seconds)
        options["config_kwargs"] = config
    return options or None


def _check_protocols(location: str) -> None:
    """Fail with the fix when fsspec does not know a protocol of ``location`` or lacks the package it needs."""
    import fsspec

    for part in location.split("::"):  # chained URLs: "simplecache::s3://bucket/x.zarr"
        protocol = part.split("://", 1)[0].lower()
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            missing = getattr(err.__cause__, "name", None) or ""
            package = missing.split(".")[0]
            need = f"the {package} package: pip install {package}" if package else "a package that is not installed"
            raise StoreError(f"{protocol}:// URLs need {need} (fsspec says: {err}); store {location!r}") from err
        except ValueError as err:
            raise StoreError(
                f"store {location!r}: fsspec knows no protocol {protocol!r}; expected a local path or a URL "
                "such as s3://bucket/train.zarr or https://host/train.zarr"
            ) from err


#: Exceptions (by class name, anywhere in their MRO) that say the store's server could not be reached in time:
#: botocore's and aiohttp's, named rather than imported so that neither is needed.
_UNREACHABLE_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ClientConnectionError",
        "ServerTimeoutError",
        "ServerDisconnectedError",
    }
)


def _open_bounded(location: str, storage_options: dict | None, seconds: float | None) -> Any:
    """``zarr.open(location, mode="r")``; a URL's metadata read may take ``seconds`` in all, retries included.

    Each retry of the client (s3fs, botocore) waits its own per-request timeout again: a stalled server would
    otherwise hold the open for many times ``seconds``.
    """
    import asyncio

    import zarr

    if seconds is None or "://" not in location:
        return zarr.open(location, mode="r", storage_options=storage_options)
    from zarr.api import asynchronous

    async def bounded() -> Any:
        opening = asynchronous.open(store=location, mode="r", storage_options=storage_options)
        return await asyncio.wait_for(opening, seconds)

    node = run_on_zarr_loop(bounded())
    return zarr.Array(node) if isinstance(node, zarr.AsyncArray) else zarr.Group(node)


def _open_error(location: str, err: BaseException, seconds: float | None = None) -> StoreError:
    """The StoreError for a store zarr could not open, the cause first: unreachable, denied, or not zarr."""
    import asyncio
    import socket

    if isinstance(err, asyncio.TimeoutError) and seconds is not None:  # _open_bounded's own bound
        return StoreError(
            f"cannot reach {location}: its zarr metadata did not arrive within read_timeout={seconds:g} s, retries "
            "included (is the server up and answering? daskfeed.open_zarr(..., read_timeout=) sets this bound)"
        )

    seen: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in seen and len(seen) < 20:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    for found in seen:
        names = {cls.__name__ for cls in type(found).__mro__}
        if isinstance(found, (ConnectionError, TimeoutError, asyncio.TimeoutError, socket.gaierror)) or (
            names & _UNREACHABLE_NAMES
        ):
            return StoreError(
                f"cannot reach {location}: {type(found).__name__}: {found} (is the server up, and the endpoint or "
                "host in the URL and storage_options right?)"
            )
    for found in seen:
        if isinstance(found, PermissionError):
            return StoreError(
                f"access to {location} was denied: {type(found).__name__}: {found} (check the credentials in "
                "storage_options)"
            )
    return StoreError(
        f"store {location!r} is not a zarr store (no zarr.json or .zarray/.zgroup found that zarr can read): "
        f"{type(err).__name__}: {err}"
    )


def open_zarr_node(
    store: Any, *, storage_options: dict | None = None, read_timeout: float | None = DEFAULT_READ_TIMEOUT
) -> tuple[Any, dict[str, Any] | None]:
    """What ``store`` opens to (a zarr.Group or zarr.Array) and, for a group, its arrays by name.

    Arrays in sub-groups are named ``"sub/name"``. Raises what :func:`open_zarr` documents. A store opened from
    a path or URL carries ``read_timeout`` to the loader's reads (:func:`store_read_timeout`).
    """
    import zarr

    read_timeout = _check_read_timeout(read_timeout)
    if isinstance(store, zarr.Array):
        return store, None
    if isinstance(store, zarr.Group):
        group = store
    else:
        if not isinstance(store, (str, os.PathLike)):
            raise InputTypeError(
                f"store must be a path, a URL, a zarr.Group or a zarr.Array, got {type(store).__name__}"
            )
        location = os.fspath(store)
        if "://" not in location and not os.path.exists(location):
            raise StoreError(f"store {location!r} does not exist")
        if "://" in location:
            _check_protocols(location)
            storage_options = _with_timeout(location, storage_options, read_timeout)
        try:
            node = _open_bounded(location, storage_options, read_timeout)
        except Exception as err:
            raise _open_error(location, err, read_timeout) from err
        _set_read_timeout(node.store, read_timeout)
        if isinstance(node, zarr.Array):
            return node, None
        group = node
    try:
        arrays = dict(group.arrays())
        for path, sub in group.groups():
            for name, arr in sub.arrays():
                arrays[f"{path}/{name}"] = arr
    except Exception:  # a member zarr cannot parse: open the others one by one, and name it
        arrays = _readable_members(group)
    if not arrays:
        raise StoreError(f"zarr group {group.store_path} holds no array")
    return group, arrays


def _readable_members(group: Any, prefix: str = "") -> dict[str, Any]:
    """The arrays of ``group`` (and its sub-groups) that zarr can open, each opened alone; a warning names
    every member that zarr cannot parse (a bad ``zarr.json``, a data type it does not know)."""
    import zarr

    async def names() -> list[str]:
        return [name async for name in group.store_path.store.list_dir(group.store_path.path)]

    arrays: dict[str, Any] = {}
    for name in sorted(run_on_zarr_loop(names())):
        if name.startswith(".") or name.endswith(".json"):
            continue
        try:
            node = group[name]
        except KeyError:  # a folder that is not a zarr node
            continue
        except Exception as err:
            warn(
                f"zarr group {group.store_path}: member {prefix + name!r} cannot be opened and is left out "
                f"({type(err).__name__}: {err})",
                DaskfeedWarning,
            )
            continue
        if isinstance(node, zarr.Array):
            arrays[prefix + name] = node
        elif not prefix:  # as group.groups() above: arrays one group down, no deeper
            arrays.update(_readable_members(node, f"{name}/"))
    return arrays


def written_shuffled(attrs: Mapping) -> bool:
    """Whether zarr attributes carry the mark ``daskfeed ingest --shuffle`` leaves: samples in random order."""
    mark = attrs.get("daskfeed")
    return isinstance(mark, Mapping) and mark.get("shuffled") is True


@dataclass(frozen=True, eq=False)
class Leaf:
    """One array of a batch: where it sits in the batch, its name for messages, and its data."""

    role: str  # "x", "y" or "sample_weight"
    key: str | None  # the dict key, or None when the role is a single array
    array: Any  # dask.array.Array (lazy) or numpy.ndarray (in memory)

    @property
    def name(self) -> str:
        return self.role if self.key is None else f"{self.role}[{self.key!r}]"

    @property
    def lazy(self) -> bool:
        return isinstance(self.array, da.Array)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def bytes_per_sample(self) -> int:
        return self.dtype.itemsize * math.prod(self.sample_shape)

    @property
    def bounds(self) -> np.ndarray | None:
        """Where the array's chunks start on the sample axis, plus its length; None for numpy arrays."""
        if not self.lazy:
            return None
        return np.concatenate([[0], np.cumsum(self.array.chunks[0])]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Inputs:
    """The leaves of a loader, which share the length of the sample axis."""

    leaves: tuple[Leaf, ...]
    structure: tuple[tuple[str, tuple[str, ...] | None], ...]  # (role, dict keys or None) per role given
    n_samples: int

    @property
    def bytes_per_sample(self) -> int:
        return sum(leaf.bytes_per_sample for leaf in self.leaves)

    def pack(self, flat: list[np.ndarray]) -> Any:
        """Rebuild ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` from one array per leaf."""
        it = iter(flat)
        parts = []
        for _role, keys in self.structure:
            parts.append(next(it) if keys is None else {k: next(it) for k in keys})
        return parts[0] if len(parts) == 1 else tuple(parts)

    def zarr_arrays(self) -> list[Any] | None:
        """The zarr array behind every lazy leaf, or None if some lazy leaf is not exactly a zarr array."""
        found = [zarr_behind(leaf.array) for leaf in self.leaves if leaf.lazy]
        return found if found and all(z is not None for z in found) else None

    def written_shuffled(self) -> bool:
        """True when every lazy leaf is a zarr array that ``daskfeed ingest --shuffle`` wrote in random order."""
        found = self.zarr_arrays()
        return found is not None and all(written_shuffled(z.attrs) for z in found)


def store_location(array: Any) -> str | None:
    """The path or URL of the store a zarr array lives in, or None for a store only this process sees."""
    store = array.store_path.store
    root = getattr(store, "root", None)  # LocalStore
    if root is not None:
        return os.fspath(root)
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)  # FsspecStore
    if fs is not None and path is not None:
        return fs.unstrip_protocol(path)
    return None


def rewrite_command(arrays: list[Any]) -> str | None:
    """The ``daskfeed ingest`` command that rewrites zarr ``arrays`` of one store with equal chunks of ~4 MiB
    in random order, or None when they are not all in one store on a path or URL."""
    roots = {store_location(z) for z in arrays}
    if None in roots or len(roots) != 1:
        return None
    root = roots.pop().rstrip("/")
    sources = []
    for z in arrays:
        path = z.path.strip("/")
        sources.append(root if not path else f"{path}={root}/{path}" if "/" in path else f"{root}/{path}")
    dest = (root[:-5] if root.endswith(".zarr") else root) + "-daskfeed.zarr"
    return (
        "Rewrite the store with equal chunks of ~4 MiB in random order, once, and train from the copy: "
        f"daskfeed ingest {' '.join(sources)} {dest} --shuffle --seed 0"
    )


def rewrite_hint(inputs: Inputs) -> str:
    """How to rewrite the loader's arrays into a store that reads fast: the exact ``daskfeed ingest`` command,
    or the :func:`daskfeed.ingest` call for arrays that are not all in one zarr store."""
    found = inputs.zarr_arrays()
    command = rewrite_command(found) if found is not None else None
    if command is not None:
        return command
    names = ", ".join(f"{leaf.key or leaf.role!r}: {leaf.name}" for leaf in inputs.leaves if leaf.lazy)
    return (
        "Rewrite the arrays with equal chunks of ~4 MiB in random order, once, and train from the copy: "
        f'daskfeed.ingest({{{names}}}, "train.zarr", shuffle=True)'
    )


def _to_array(value: Any, name: str) -> Any:
    """A dask array or a numpy array, from what users pass."""
    import zarr

    if isinstance(value, da.Array):
        return value
    if isinstance(value, zarr.Array):
        return _from_zarr(value)
    if isinstance(value, np.ndarray):
        return value
    if type(value).__name__ == "DataArray" and hasattr(value, "dims"):  # xarray, without importing it
        return _to_array(value.data, name)
    raise InputTypeError(
        f"{name} must be a dask array, a zarr array, a numpy array or an xarray DataArray (or a dict of "
        f"those), got {type(value).__module__}.{type(value).__qualname__}"
        + (". Convert lists with numpy.asarray first." if isinstance(value, (list, tuple)) else "")
    )


def _check_leaf(leaf: Leaf) -> None:
    arr = leaf.array
    if arr.ndim == 0:
        raise InputError(f"{leaf.name} is a 0-d array; expected at least one axis, the sample axis (axis 0)")
    if leaf.dtype.kind not in TENSOR_KINDS:
        raise InputTypeError(
            f"{leaf.name} has dtype {leaf.dtype}, which cannot become a tensor; expected a bool, integer, "
            "float or complex dtype (encode strings or objects as numbers first)"
        )
    unknown = [axis for axis, sizes in enumerate(arr.chunks) if any(math.isnan(c) for c in sizes)] if leaf.lazy else []
    if unknown:
        where = "the sample axis (axis 0)" if unknown[0] == 0 else f"axis {unknown[0]}"
        raise InputError(
            f"{leaf.name} has unknown chunk sizes on {where} (shape {tuple(arr.shape)}, as after boolean indexing); "
            "expected known sizes: call .compute_chunk_sizes() on it first"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{leaf.name} has zero samples (shape {tuple(arr.shape)}); expected at least one")


def normalize_inputs(x: Any, y: Any = None, sample_weight: Any = None) -> Inputs:
    """Check x / y / sample_weight: kinds, dtypes, and one length of the sample axis for all of them."""
    if x is None:
        raise InputError("x is required; got None")
    if y is None and sample_weight is not None:
        raise InputError("sample_weight needs y: pass y as well, or drop sample_weight")
    leaves: list[Leaf] = []
    structure = []
    for role, value in (("x", x), ("y", y), ("sample_weight", sample_weight)):
        if value is None:
            continue
        if isinstance(value, Mapping):
            if not value:
                raise InputError(f"{role} is an empty dict; expected at least one array")
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise InputTypeError(f"{role} dict keys must be strings, got {bad[0]!r}")
            keys = tuple(value)
            for k in keys:
                leaves.append(Leaf(role, k, _to_array(value[k], f"{role}[{k!r}]")))
            structure.append((role, keys))
        else:
            leaves.append(Leaf(role, None, _to_array(value, role)))
            structure.append((role, None))
    for leaf in leaves:
        _check_leaf(leaf)
    first = leaves[0]
    for leaf in leaves[1:]:
        if leaf.array.shape[0] != first.array.shape[0]:
            raise InputError(
                f"arrays {first.name} and {leaf.name} must have the same length on axis 0 (samples), "
                f"got {first.array.shape[0]} and {leaf.array.shape[0]}"
            )
    return Inputs(tuple(leaves), tuple(structure), int(first.array.shape[0]))

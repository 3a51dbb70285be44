"""open_zarr, and turning x / y / sample_weight into named leaves aligned on one sample axis."""

from __future__ import annotations

import collections
import contextlib
import difflib
import math
import numbers
import os
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from daskfeed._compat import from_zarr_array, run_on_zarr_loop
from daskfeed.errors import DaskfeedWarning, InputError, InputTypeError, StoreError, warn

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "TENSOR_KINDS",
    "ArrayNotFound",
    "DatasetRoles",
    "Inputs",
    "Leaf",
    "StoreArrays",
    "dataset_roles",
    "dims_of",
    "missing_path_hint",
    "normalize_inputs",
    "open_zarr",
    "open_zarr_node",
    "store_read_timeout",
    "store_roles",
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
        found = from_zarr_array(array)
    return found


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
    StoreArrays (a dict of str to dask.array.Array), or dask.array.Array
        A group gives a dict of its arrays, keyed by their names in the store (arrays in sub-groups are named
        ``"sub/name"``): a store whose arrays are ``images`` and ``labels`` gives ``arrays["images"]`` and
        ``arrays["labels"]``, and a name it lacks is a ``KeyError`` that lists the names it has. A store that
        xarray wrote (``Dataset.to_zarr``) gives its data variables and its coordinates alike, by name. An array
        gives one dask array.

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
    >>> arrays["images"]  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskfeed.inputs.ArrayNotFound: store memory://... has no array 'images'; its arrays are 'x' ...
    """
    import zarr

    node, arrays = open_zarr_node(store, storage_options=storage_options, read_timeout=read_timeout)
    if isinstance(store, (zarr.Array, zarr.Group)):  # opened by the caller: the whole-read bound still applies
        _set_read_timeout(store.store, read_timeout)
    if arrays is None:
        return _from_zarr(node)
    where = os.fspath(store) if isinstance(store, (str, os.PathLike)) else str(node.store_path)
    return StoreArrays({name: _from_zarr(arr) for name, arr in arrays.items()}, where)


class ArrayNotFound(KeyError):
    """A name that a store (or the dict :func:`open_zarr` gave for it) lacks; the message lists its arrays."""

    def __init__(self, message: str, key: Any = None):
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:  # a KeyError would show its message quoted, as a key
        return str(self.args[0])


def _closest(name: str, names: Collection[str]) -> str | None:
    found = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return found[0] if found else None


class StoreArrays(dict):
    """The arrays of a zarr group, as :func:`open_zarr` gives them: a dict keyed by the store's own array names.

    A missing key is a ``KeyError`` that names the store and lists its arrays, instead of a bare ``KeyError: 'x'``.
    """

    def __init__(self, arrays: Mapping[str, Any], where: str):
        super().__init__(arrays)
        self.where = where

    def __missing__(self, key: Any) -> Any:
        names = ", ".join(repr(k) for k in sorted(self, key=str))
        close = _closest(key, list(self)) if isinstance(key, str) else None
        hint = f"; did you mean arrays[{close!r}]?" if close is not None else ""
        raise ArrayNotFound(
            f"store {self.where} has no array {key!r}; its arrays are {names} (open_zarr's keys are the store's "
            f"own array names){hint}",
            key,
        )


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
            raise StoreError(f"store {location!r} does not exist{missing_path_hint(location)}")
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


def missing_path_hint(location: str) -> str:
    """For a local path that does not exist inside a zarr store (a misspelt ``train.zarr/image``): the store's
    arrays and the closest path, as a clause to append to "does not exist"; else ``""``."""
    path = os.path.normpath(location)
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not parent or not any(os.path.exists(os.path.join(parent, m)) for m in ("zarr.json", ".zgroup")):
        return ""
    try:
        _node, arrays = open_zarr_node(parent)
    except Exception:  # a store zarr cannot read: no hint, the caller's message stands
        return ""
    if not arrays:
        return ""
    inner = os.path.relpath(path, parent).replace(os.sep, "/")
    close = _closest(inner, list(arrays))
    listed = ", ".join(repr(name) for name in sorted(arrays))
    store = location[: len(location) - len(inner)].rstrip("/\\") if location.endswith(inner) else parent
    mean = f" (did you mean {store}/{close}?)" if close is not None else ""
    return f": {store!r} is a zarr store whose arrays are {listed}{mean}"


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


def dims_of(array: Any) -> tuple[str, ...] | None:
    """The dimension names of a zarr array, as xarray writes them (``dimension_names`` in zarr 3's metadata,
    the ``_ARRAY_DIMENSIONS`` attribute in zarr 2's), or of an xarray object; None when it has none."""
    dims = getattr(array, "dims", None)  # xarray
    if dims is None:
        metadata = getattr(array, "metadata", None)
        dims = getattr(metadata, "dimension_names", None)
        if dims is None:
            with contextlib.suppress(Exception):
                dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(dims, (tuple, list)) or len(dims) != len(array.shape):
        return None
    if not all(isinstance(d, str) for d in dims):
        return None
    return tuple(dims)


def coordinate_names(
    dims: Mapping[str, tuple[str, ...] | None], attrs: Mapping[str, Mapping], group_attrs: Mapping | None = None
) -> set[str]:
    """Which arrays of a store xarray wrote are coordinates: those named after their one dimension (``time``,
    ``lat``) and those listed in a ``coordinates`` attribute (of a variable or of the group), as xarray does."""
    found = {name for name, d in dims.items() if d is not None and tuple(d) == (name.rpartition("/")[2],)}
    for holder in [*attrs.values(), group_attrs or {}]:
        listed = holder.get("coordinates") if isinstance(holder, Mapping) else None
        if isinstance(listed, str):
            found.update(name for name in listed.split() if name in dims)
    return found


@dataclass(frozen=True)
class DatasetRoles:
    """What each array of an xarray dataset (or a store ``Dataset.to_zarr`` wrote) is to daskfeed.

    The **sample dimension** is the leading dimension of the data variables that hold the most bytes (``time``
    for variables ``(time, lat, lon)``). Data variables along it are what a loader reads; coordinates along it
    (``time``) go with their samples (``daskfeed ingest --shuffle`` shuffles them with the data); coordinates
    and variables along other dimensions (``lat``, ``lon``) are kept as they are.

    Attributes
    ----------
    sample_dim : str
        The dimension along which samples run.
    variables : tuple of str
        Data variables whose first dimension is the sample dimension: a loader's inputs.
    coords : tuple of str
        Coordinates whose first dimension is the sample dimension.
    kept : tuple of str
        Coordinates and variables along other dimensions.
    dims : dict of str to tuple of str
        Every array's dimension names (made up, ``NAME_dim_1``, for arrays that have none).
    misplaced : dict of str to int
        Arrays that have the sample dimension on another axis than the first, with that axis.
    coordinates : tuple of str
        Every coordinate, along the sample dimension or not.
    """

    sample_dim: str
    variables: tuple[str, ...]
    coords: tuple[str, ...]
    kept: tuple[str, ...]
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    misplaced: dict[str, int] = field(default_factory=dict)
    #: Every coordinate, along the sample dimension or not.
    coordinates: tuple[str, ...] = ()

    @property
    def along(self) -> tuple[str, ...]:
        """The arrays along the sample dimension: data variables, then coordinates."""
        return self.variables + self.coords

    def describe(self) -> str:
        """One line: the sample dimension, and what goes where."""
        parts = [f"xarray dataset, samples along {self.sample_dim!r}: a loader reads {', '.join(self.variables)}"]
        if len(self.coords) == 1:
            parts.append(f"coordinate {self.coords[0]} goes with its samples (ingest --shuffle shuffles it too)")
        elif self.coords:
            parts.append(f"coordinates {', '.join(self.coords)} go with their samples (ingest --shuffle shuffles them)")
        if self.kept:
            parts.append(f"{', '.join(self.kept)} (along other dimensions) are kept as they are")
        return "; ".join(parts)


def dataset_roles(
    arrays: Mapping[str, tuple[tuple[str, ...] | None, tuple[int, ...], int]], coordinates: Collection[str]
) -> DatasetRoles | None:
    """Sort arrays, ``name -> (dimension names or None, shape, itemsize)``, into a :class:`DatasetRoles`;
    None when no array has dimension names (not an xarray dataset) or no data variable does."""
    named = {name: d for name, (d, _shape, _size) in arrays.items() if d}
    variables = [name for name in named if name not in coordinates]
    if not variables:
        return None
    weight: dict[str, int] = {}
    for name in variables:
        dims, shape, itemsize = arrays[name]
        weight[dims[0]] = weight.get(dims[0], 0) + itemsize * math.prod(shape)
    sample = max(weight, key=lambda d: weight[d])  # ties: the first data variable's
    lengths = [arrays[n][1][0] for n in variables if named[n][0] == sample]
    length = max(set(lengths), key=lengths.count)
    roles: dict[str, list[str]] = {"variables": [], "coords": [], "kept": []}
    dims: dict[str, tuple[str, ...]] = {}
    misplaced: dict[str, int] = {}
    for name, (d, shape, _size) in arrays.items():
        along = d[0] == sample if d else bool(shape) and shape[0] == length
        if d is None and not shape:
            d = ()
        elif d is None:
            safe = name.replace("/", "_")
            first = [sample] if along else [f"{safe}_dim_0"]
            d = (*first, *(f"{safe}_dim_{i}" for i in range(1, len(shape))))
        elif sample in d[1:]:
            misplaced[name] = d.index(sample)
        dims[name] = tuple(d)
        coordinate = name in coordinates
        roles["kept" if not along else "coords" if coordinate else "variables"].append(name)
    return DatasetRoles(
        sample,
        tuple(roles["variables"]),
        tuple(roles["coords"]),
        tuple(roles["kept"]),
        dims,
        misplaced,
        tuple(name for name in arrays if name in coordinates),
    )


def store_roles(arrays: Mapping[str, Any], group_attrs: Mapping | None = None) -> DatasetRoles | None:
    """:func:`dataset_roles` of the zarr arrays of one group (by name), or None when xarray did not write it."""
    dims = {name: dims_of(arr) for name, arr in arrays.items()}
    if not any(dims.values()):
        return None
    attrs = {}
    for name, arr in arrays.items():
        with contextlib.suppress(Exception):
            attrs[name] = dict(arr.attrs)
    coordinates = coordinate_names(dims, attrs, group_attrs)
    described = {name: (dims[name], tuple(arr.shape), np.dtype(arr.dtype).itemsize) for name, arr in arrays.items()}
    return dataset_roles(described, coordinates)


def is_dataset(value: Any) -> bool:
    """Whether ``value`` is an ``xarray.Dataset`` (without importing xarray)."""
    return type(value).__name__ == "Dataset" and hasattr(value, "data_vars") and hasattr(value, "coords")


def row_bytes(array: Any) -> int:
    """Bytes of one row along axis 0 of ``array`` (numpy, dask or zarr): the one place this is worked out."""
    return np.dtype(array.dtype).itemsize * math.prod(int(s) for s in array.shape[1:])


def chunk_bounds(array: Any) -> np.ndarray:
    """Where the chunks of ``array`` (dask or zarr) start along axis 0, plus its length: ``[0, 1000, ..., n]``.

    The one place this is worked out, for dask's chunks (a tuple of lengths) and zarr's (one length).
    """
    n, step = int(array.shape[0]), array.chunks[0]
    if isinstance(step, (int, np.integer)):  # zarr: regular chunks
        return np.append(np.arange(0, n, max(1, int(step)), dtype=np.int64), n)
    return np.concatenate([[0], np.cumsum(step)]).astype(np.int64)


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
        return row_bytes(self.array)

    @property
    def bounds(self) -> np.ndarray | None:
        """Where the array's chunks start on the sample axis, plus its length; None for numpy arrays."""
        return chunk_bounds(self.array) if self.lazy else None


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


def rewrite_command(arrays: list[Any], keep_order: bool = False) -> str | None:
    """The ``daskfeed ingest`` command that rewrites zarr ``arrays`` of one store with equal chunks of ~4 MiB
    in random order (in their order with ``keep_order``: a series cut by ``window={0: L}``), or None when they
    are not all in one store on a path or URL."""
    roots = {store_location(z) for z in arrays}
    if None in roots or len(roots) != 1:
        return None
    root = roots.pop().rstrip("/")
    sources = []
    for z in arrays:
        path = z.path.strip("/")
        sources.append(root if not path else f"{path}={root}/{path}" if "/" in path else f"{root}/{path}")
    dest = (root[:-5] if root.endswith(".zarr") else root) + "-daskfeed.zarr"
    if keep_order:
        return (
            "Rewrite the store with equal chunks of ~4 MiB, once, in its order (not --shuffle: windows of a series "
            f"need its rows in order), and train from the copy: daskfeed ingest {' '.join(sources)} {dest}"
        )
    return (
        "Rewrite the store with equal chunks of ~4 MiB in random order, once, and train from the copy: "
        f"daskfeed ingest {' '.join(sources)} {dest} --shuffle --seed 0"
    )


def rewrite_hint(inputs: Inputs, keep_order: bool = False) -> str:
    """How to rewrite the loader's arrays into a store that reads fast: the exact ``daskfeed ingest`` command,
    or the :func:`daskfeed.ingest` call for arrays that are not all in one zarr store. ``keep_order`` (windows
    of a series, ``window={0: L}``) keeps the rows in their order instead of shuffling them."""
    found = inputs.zarr_arrays()
    command = rewrite_command(found, keep_order) if found is not None else None
    if command is not None:
        return command
    names = ", ".join(f"{leaf.key or leaf.role!r}: {leaf.name}" for leaf in inputs.leaves if leaf.lazy)
    if keep_order:
        return (
            "Rewrite the arrays with equal chunks of ~4 MiB, once, in their order (not shuffled: windows of a "
            f'series need its rows in order), and train from the copy: daskfeed.ingest({{{names}}}, "train.zarr")'
        )
    return (
        "Rewrite the arrays with equal chunks of ~4 MiB in random order, once, and train from the copy: "
        f'daskfeed.ingest({{{names}}}, "train.zarr", shuffle=True)'
    )


def _dataset_error(role: str, ds: Any) -> InputTypeError:
    """The error for an ``xarray.Dataset`` given as ``x``, ``y`` or ``sample_weight``: which variables to pass."""
    names = [str(name) for name in ds.data_vars]
    labels = [n for n in names if n.lower() in ("y", "label", "labels", "target", "targets", "class", "classes")]
    if not labels:  # one integer per sample looks like a label; a field (time, lat, lon) like an input
        labels = [n for n in names if ds[n].ndim == 1 and np.dtype(ds[n].dtype).kind in "iub"]
    inputs = sorted((n for n in names if n not in labels), key=lambda n: -int(ds[n].size))
    x = inputs[0] if inputs else names[0] if names else "VAR"
    y = labels[0] if labels else next((n for n in names if n != x), None)
    example = f'x=ds["{x}"]' + (f', y=ds["{y}"]' if y is not None else "")
    several = f'x={{"{x}": ds["{x}"], ...}}'
    listed = ", ".join(repr(n) for n in names) or "none"
    return InputTypeError(
        f"{role} is an xarray.Dataset (data variables {listed}); daskfeed takes arrays, so that a label variable "
        f"never becomes a model input by accident: pass the variables you mean, as DataArrays: {example} (a dict "
        f"for several inputs: {several})"
    )


def _to_array(value: Any, name: str) -> Any:
    """A dask array or a numpy array, from what users pass."""
    import zarr

    if is_dataset(value):
        raise _dataset_error(name, value)
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
        if is_dataset(value):  # a Mapping of its data variables, labels too: refused, with what to pass
            raise _dataset_error(role, value)
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

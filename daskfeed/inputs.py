"""open_zarr, and turning x / y / sample_weight into named leaves aligned on one sample axis."""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from daskfeed.errors import InputError, InputTypeError, StoreError

__all__ = [
    "TENSOR_KINDS",
    "Inputs",
    "Leaf",
    "normalize_inputs",
    "open_zarr",
    "open_zarr_node",
    "written_shuffled",
    "zarr_behind",
]

#: Chunk length for inputs that are all in memory (numpy): about this many bytes per chunk.
MEMORY_CHUNK_BYTES = 4 * 2**20
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
    """The zarr array a dask array reads with nothing else on top, if daskfeed opened it; else None."""
    return _ZARR_BY_NAME.get(array.name)


def open_zarr(store: Any, *, storage_options: dict | None = None) -> dict[str, da.Array] | da.Array:
    """Open a zarr store lazily, as dask arrays with one dask chunk per zarr chunk.

    Parameters
    ----------
    store : str, os.PathLike, zarr.Group or zarr.Array
        A local path, a URL fsspec understands (``"s3://bucket/train.zarr"``), or an open zarr object.
    storage_options : dict, optional
        Passed to fsspec for URLs (credentials, endpoint, ...).

    Returns
    -------
    dict of str to dask.array.Array, or dask.array.Array
        A group gives a dict of its arrays, by name (arrays in sub-groups are named ``"sub/name"``);
        an array gives one dask array.

    Raises
    ------
    StoreError
        If ``store`` does not exist or is not a zarr store, or a group holds no array.

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
    node, arrays = open_zarr_node(store, storage_options=storage_options)
    if arrays is None:
        return _from_zarr(node)
    return {name: _from_zarr(arr) for name, arr in arrays.items()}


def open_zarr_node(store: Any, *, storage_options: dict | None = None) -> tuple[Any, dict[str, Any] | None]:
    """What ``store`` opens to (a zarr.Group or zarr.Array) and, for a group, its arrays by name.

    Arrays in sub-groups are named ``"sub/name"``. Raises what :func:`open_zarr` documents.
    """
    import zarr

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
        try:
            node = zarr.open(location, mode="r", storage_options=storage_options)
        except Exception as err:
            raise StoreError(
                f"store {location!r} is not a zarr store (no zarr.json or .zarray/.zgroup found "
                f"that zarr can read): {err}"
            ) from err
        if isinstance(node, zarr.Array):
            return node, None
        group = node
    arrays = dict(group.arrays())
    for path, sub in group.groups():
        for name, arr in sub.arrays():
            arrays[f"{path}/{name}"] = arr
    if not arrays:
        raise StoreError(f"zarr group {group.store_path} holds no array")
    return group, arrays


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


@dataclass(frozen=True, eq=False)
class Inputs:
    """The leaves of a loader and the chunk boundaries on the sample axis that all of them share."""

    leaves: tuple[Leaf, ...]
    structure: tuple[tuple[str, tuple[str, ...] | None], ...]  # (role, dict keys or None) per role given
    chunk_bounds: np.ndarray
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
    if leaf.lazy and any(math.isnan(c) for c in arr.chunks[0]):
        raise InputError(
            f"{leaf.name} has unknown chunk sizes on the sample axis; call .compute_chunk_sizes() on it first"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{leaf.name} has zero samples (shape {tuple(arr.shape)}); expected at least one")


def _boundaries(arr: da.Array) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(arr.chunks[0])]).astype(np.int64)


def normalize_inputs(x: Any, y: Any = None, sample_weight: Any = None) -> Inputs:
    """Check x / y / sample_weight and align them on the sample axis.

    Chunks of the plan are the coarsest run of samples that is whole in every lazy array: with ``x`` chunked
    by 1,000 and ``y`` by 50,000, one plan chunk holds 50 chunks of ``x`` and one of ``y``, so no chunk of
    either is computed twice. In-memory (numpy) arrays are cut to whatever the lazy ones need.
    """
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
    n = int(first.array.shape[0])
    lazy = [leaf for leaf in leaves if leaf.lazy]
    if lazy:
        common = _boundaries(lazy[0].array)
        for leaf in lazy[1:]:
            common = np.intersect1d(common, _boundaries(leaf.array))
        bounds = common
    else:
        per_sample = max(1, sum(leaf.bytes_per_sample for leaf in leaves))
        step = max(1, min(n, MEMORY_CHUNK_BYTES // per_sample))
        bounds = np.unique(np.append(np.arange(0, n, step, dtype=np.int64), n))
    return Inputs(tuple(leaves), tuple(structure), bounds.astype(np.int64), n)

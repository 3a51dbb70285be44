"""Sources of ``daskfeed ingest``: .npy / .npz / HDF5 files, folders of images, zarr stores and arrays in memory."""

from __future__ import annotations

import abc
import contextlib
import glob
import math
import os
import re
import struct
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import InputError, InputTypeError
from daskfeed.inputs import TENSOR_KINDS

__all__ = ["HDF5_SUFFIXES", "IMAGE_SUFFIXES", "SourceSet"]

#: What ``keras.utils.image_dataset_from_directory`` reads, plus TIFF and WebP, which Pillow reads too.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nc")
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")


# -- reading the sources ------------------------------------------------------------------------------------


class _Part(abc.ABC):
    """One source's contribution to one array: its rows in order, read by ranges."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    sequential = False  # True when reading out of order is slow (a compressed .npz member)
    #: Rows that the source decodes together (a zarr or dask chunk): reads are best aligned to runs of them.
    read_rows = 1
    #: xarray's dimension names, where the source has them (a store xarray wrote, a Dataset or DataArray).
    dims: tuple[str, ...] | None = None
    #: The source's own attributes, carried to the array written (units, calendar, long_name, ...).
    attrs: dict | None = None
    #: Whether the source is a coordinate of an xarray dataset (``time``, ``lat``) rather than a data variable.
    coordinate = False
    #: Whether it came with others from one dataset or store: then it may lie along another dimension than the
    #: samples (``lat``), and is kept as it is; an array given alone always runs along the samples.
    grouped = False

    @abc.abstractmethod
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a numpy array."""

    def fingerprint(self) -> list:
        st = os.stat(self.path)
        return [os.path.abspath(self.path), st.st_size, st.st_mtime_ns, list(self.shape), str(self.dtype)]

    def close(self) -> None:  # noqa: B027  (most parts hold nothing to close)
        pass


def _require(module: str, extra: str, why: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{why} needs {module}: pip install 'daskfeed[{extra}]'") from err


class _NpyPart(_Part):
    def __init__(self, path: str):
        self.path = path
        try:
            self._data = np.load(path, mmap_mode="r")  # never loaded whole
        except EOFError:  # numpy's word for a file of 0 bytes
            raise InputError(f"cannot read {path!r} as a .npy file: it is empty (0 bytes)") from None
        except (ValueError, OSError) as err:
            raise InputError(f"cannot read {path!r} as a .npy file: {err}") from err
        self.shape = tuple(self._data.shape)
        self.dtype = self._data.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._data[start:stop])


class _NpzPart(_Part):
    """One member of a .npz: memory-mapped where stored as is (``np.savez``), streamed where compressed."""

    def __init__(self, path: str, zf: zipfile.ZipFile, member: str):
        self.path = path
        self.key = member[:-4]
        info = zf.getinfo(member)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            header = f.tell()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row = self.dtype.itemsize * math.prod(self.shape[1:])
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offset = info.header_offset + 30 + name_len + extra_len + header
            self._data = np.memmap(path, self.dtype, "r", offset, self.shape, "F" if fortran else "C")
        else:
            if fortran and len(self.shape) > 1:
                raise InputError(
                    f"{path!r}: member {self.key!r} is a compressed Fortran-ordered array, whose samples are not "
                    "contiguous; save it with numpy.ascontiguousarray, or with numpy.savez (not compressed)"
                )
            self._data = None
            self.sequential = True
            self._member, self._header = member, header
            self._lock = threading.Lock()
            self._stream: Any = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._data is not None:
            return np.asarray(self._data[start:stop])
        with self._lock:
            if self._stream is None:
                self._zip = zipfile.ZipFile(self.path)  # closed in close()
                self._stream = self._zip.open(self._member)
            self._stream.seek(self._header + start * self._row)  # forward seeks decompress and skip
            raw = self._stream.read((stop - start) * self._row)
        return np.frombuffer(raw, self.dtype).reshape((stop - start, *self.shape[1:]))

    def close(self) -> None:
        if self._data is None and self._stream is not None:
            self._stream.close()
            self._zip.close()
            self._stream = None


class _H5Part(_Part):
    def __init__(self, path: str, dataset: str, file: Any):
        self.path, self.dataset, self._file = path, dataset, file
        ds = file[dataset]
        self.shape, self.dtype = tuple(ds.shape), ds.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._file[self.dataset][start:stop]  # h5py serialises threads with its own lock

    def fingerprint(self) -> list:
        return [*super().fingerprint(), self.dataset]


class _ImagesPart(_Part):
    """A folder with one sub-folder per class: images decoded (and resized) by Pillow, in file order."""

    def __init__(self, path: str, files: list[str], size: tuple[int, int] | None, color_mode: str):
        self.path, self._files, self._size = path, files, size
        self._mode, channels = COLOR_MODES[color_mode]
        if size is None:
            size = self._open(files[0]).size[::-1]  # Pillow gives (width, height)
        self.shape, self.dtype = (len(files), *size, channels), np.dtype(np.uint8)

    def _open(self, file: str) -> Any:
        Image = _require("PIL.Image", "images", "reading images")
        try:
            image = Image.open(file)
            image.load()
        except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise InputError(f"cannot read image {file!r}: {type(err).__name__}: {err}") from err
        return image

    def read(self, start: int, stop: int) -> np.ndarray:
        Image = _require("PIL.Image", "images", "reading images")
        out = np.empty((stop - start, *self.shape[1:]), np.uint8)
        height, width = self.shape[1:3]
        for i, file in enumerate(self._files[start:stop]):
            image = self._open(file).convert(self._mode)
            if self._size is not None:
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            elif image.size != (width, height):
                raise InputError(
                    f"image {file!r} is {image.size[1]}x{image.size[0]} (height x width) but the first image "
                    f"is {height}x{width}; pass image_size=(height, width) (--image-size H W) to resize them all"
                )
            out[i] = np.asarray(image).reshape(self.shape[1:])
        return out

    def fingerprint(self) -> list:
        sizes = sum(os.stat(f).st_size for f in self._files)
        return [os.path.abspath(self.path), len(self._files), sizes, list(self.shape)]


class _LabelsPart(_Part):
    def __init__(self, path: str, labels: np.ndarray):
        self.path, self._labels = path, labels
        self.shape, self.dtype = labels.shape, labels.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._labels[start:stop]

    def fingerprint(self) -> list:
        return [os.path.abspath(self.path), int(self._labels.shape[0]), int(self._labels.sum())]


class _ZarrPart(_Part):
    """A zarr array (opened from a path or URL, or given from Python), read by ranges of its rows."""

    def __init__(self, path: str, array: Any):
        from daskfeed.inputs import dims_of

        self.path, self._array = path, array
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        self.read_rows = int(array.chunks[0]) if array.ndim else 1
        self.dims = dims_of(array)
        self.attrs = _json_attrs(dict(array.attrs))
        self.coordinate = self.dims is not None and self.dims == (path.rstrip("/").rpartition("/")[2],)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array[start:stop] if self.shape else self._array[...])

    def fingerprint(self) -> list:
        meta = [m for m in ("zarr.json", ".zarray") if "://" not in self.path and os.path.exists(f"{self.path}/{m}")]
        stamp = os.stat(f"{self.path}/{meta[0]}").st_mtime_ns if meta else None
        return [self.path, stamp, list(self.shape), str(self.dtype), int(self.read_rows)]


class _ArrayPart(_Part):
    """A dask or numpy array given from Python, or an xarray variable (of a DataArray or a Dataset): its dask
    array when it has one, else read by slices through xarray, so that a lazily loaded variable stays lazy."""

    def __init__(self, name: str, array: Any, *, coordinate: bool = False, grouped: bool = False):
        import dask.array as da

        self._xarray = _is_xarray(array)
        if self._xarray:
            variable = getattr(array, "variable", array)  # a DataArray's Variable; a Variable as is
            self.dims = tuple(str(d) for d in variable.dims)
            self.attrs = _json_attrs(dict(variable.attrs))
            array = variable.data if variable.chunks is not None else variable  # .data of the rest would load it
        self.coordinate, self.grouped = coordinate, grouped
        self.path, self._array = f"<array {name}>", array
        self.shape, self.dtype = tuple(int(s) for s in array.shape), np.dtype(array.dtype)
        self._lazy = isinstance(array, da.Array)
        if self._lazy and any(math.isnan(c) for c in array.chunks[0]):
            raise InputError(f"array {name!r} has unknown chunk sizes; call .compute_chunk_sizes() on it first")
        self.read_rows = int(max(array.chunks[0])) if self._lazy and array.ndim else 1

    def _rows(self, selection: Any) -> np.ndarray:
        part = self._array[selection]
        if self._lazy:  # inside ingest's own threads: compute the slice here, not on a second pool
            return np.asarray(part.compute(scheduler="synchronous"))
        return np.asarray(part.values if _is_xarray(part) else part)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._rows(slice(start, stop) if self.shape else ...)

    def fingerprint(self) -> list:
        if self._lazy:
            return [self.path, self._array.name, list(self.shape), str(self.dtype)]
        import zlib

        rows = self._rows(slice(None, None, max(1, self.shape[0] // 64)) if self.shape else ...)
        return [self.path, list(self.shape), str(self.dtype), zlib.crc32(np.ascontiguousarray(rows).tobytes())]


def _is_xarray(value: Any) -> bool:
    """An xarray DataArray or Variable (without importing xarray)."""
    return type(value).__name__ in ("DataArray", "Variable", "IndexVariable") and hasattr(value, "dims")


def _json_attrs(attrs: dict) -> dict:
    """Attributes as JSON that zarr can write: numpy scalars and arrays as Python values, a NaN ``_FillValue``
    (xarray's default for floats, which changes nothing on reading) left out, and daskfeed's own marks and
    zarr 2's dimension list dropped (the store written carries both anew)."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, (list, tuple, set)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    out = {}
    for key, value in attrs.items():
        if key in ("_ARRAY_DIMENSIONS", "daskfeed"):
            continue
        if key == "_FillValue" and isinstance(value, (float, np.floating)) and math.isnan(value):
            continue
        out[str(key)] = plain(value)
    return out


def _is_zarr(path: str) -> bool:
    """A zarr group or array: a URL, or a folder with zarr's metadata (v3 or v2)."""
    return "://" in path or any(os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zgroup", ".zarray"))


def _zarr(path: str, name: str | None, meta: dict) -> list[tuple[str, _Part]]:
    """A zarr store's arrays (``sub/name`` in sub-groups), or one array; ``NAME=`` names it, or prefixes a group's.
    The group's attributes go to ``meta["attrs"]``."""
    from daskfeed.inputs import open_zarr_node

    node, arrays = open_zarr_node(path)
    location = path.rstrip("/")
    if arrays is None:
        return [(name or os.path.basename(location), _ZarrPart(location, node))]
    return _group_parts(node, arrays, name, location, meta)


def _group_parts(group: Any, arrays: dict, name: str | None, location: str, meta: dict) -> list[tuple[str, _Part]]:
    """The parts of a zarr group's arrays, each knowing whether it is a coordinate of the dataset xarray wrote."""
    from daskfeed.inputs import coordinate_names, dims_of

    group_attrs = dict(group.attrs)
    for key, value in _json_attrs(group_attrs).items():
        meta.setdefault("attrs", {}).setdefault(key, value)
    dims = {key: dims_of(array) for key, array in arrays.items()}
    coordinates = coordinate_names(dims, {k: dict(a.attrs) for k, a in arrays.items()}, group_attrs)
    out = []
    for key, array in arrays.items():
        part = _ZarrPart(f"{location}/{key}", array)
        part.coordinate, part.grouped = key in coordinates, True
        out.append((f"{name}/{key}" if name else key, part))
    return out


def _dataset(name: str | None, ds: Any, meta: dict) -> list[tuple[str, _Part]]:
    """The variables of an ``xarray.Dataset``, data and coordinates, encoded as ``Dataset.to_zarr`` encodes them
    (times as numbers with ``units`` and ``calendar``), so that xarray reads the store written as it was."""
    from xarray import conventions

    try:
        variables, attrs = conventions.encode_dataset_coordinates(ds)
        variables, attrs = conventions.cf_encoder(variables, attrs)
    except Exception as err:  # an encoding xarray refuses: say how to go through a store instead
        raise InputError(
            f"cannot encode the xarray.Dataset for writing ({type(err).__name__}: {err}); write it with "
            "ds.to_zarr(PATH) and ingest PATH instead"
        ) from err
    for key, value in _json_attrs(dict(attrs)).items():
        meta.setdefault("attrs", {}).setdefault(key, value)
    coords = {str(c) for c in ds.coords}
    out = []
    for key, variable in variables.items():
        key = str(key)
        full = f"{name}/{key}" if name else key
        out.append((full, _ArrayPart(full, variable, coordinate=key in coords, grouped=True)))
    return out


@dataclass
class _Source:
    """One array of the store: its parts, end to end along the sample axis (or, ``kept``, one array written as
    it is: a coordinate or variable of a dataset along another dimension than the samples)."""

    name: str
    parts: list[_Part] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    #: Dimension names to write (xarray's ``dimension_names``), or None for a store without them.
    dims: tuple[str, ...] | None = None
    coordinate: bool = False
    grouped: bool = False
    kept: bool = False
    #: Read whole on first use and served from memory (see :meth:`SourceSet.hold_small`).
    held: bool = False
    _whole: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def read_rows(self) -> int:
        """The most rows one of its sources decodes together (a zarr or dask chunk); 1 for files."""
        return max(p.read_rows for p in self.parts)

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.parts[0].shape:
            return ()
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    @property
    def what(self) -> str:
        """How messages name it: ``coordinate 'time'``, ``array 'x'``."""
        return f"{'coordinate' if self.coordinate else 'array'} {self.name!r}"

    def read(self, start: int, stop: int) -> np.ndarray:
        if not self.shape:
            return self.parts[0].read(0, 0)
        if self.held:
            with self._lock:
                if self._whole is None:
                    self.held = False  # read it once, through the parts
                    try:
                        self._whole = self.read(0, self.shape[0])
                    finally:
                        self.held = True
            return self._whole[start:stop]
        pieces, offset = [], 0
        for part in self.parts:
            n = part.shape[0]
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                pieces.append(part.read(lo - offset, hi - offset))
            offset += n
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def add(self, part: _Part) -> None:
        if self.parts:
            first = self.parts[0]
            if len(part.shape) == 0 or len(first.shape) == 0:
                raise InputError(
                    f"cannot put the sources of array {self.name!r} end to end: {_where(first)} or {_where(part)} "
                    "is a 0-d array; give each source its own NAME="
                )
            if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
                raise InputError(
                    f"cannot put the files of array {self.name!r} end to end: {_where(first)} holds "
                    f"{first.shape} {first.dtype} and {_where(part)} holds {part.shape} {part.dtype}; every "
                    "file of one array needs the same shape after axis 0 (samples) and the same dtype"
                )
        else:
            self.dims, self.coordinate, self.grouped = part.dims, part.coordinate, part.grouped
            self.attrs = {**(part.attrs or {}), **self.attrs}
        self.parts.append(part)

    def check(self) -> None:
        """What every array written must be: numeric, and (along the samples) at least 1-d."""
        part = self.parts[0]
        if not self.kept and len(self.shape) == 0:
            raise InputError(f"{_where(part)} is a 0-d array; expected at least one axis, the sample axis (axis 0)")
        if self.dtype.kind not in TENSOR_KINDS:
            if self.coordinate or self.grouped:
                raise InputTypeError(
                    f"{self.what} has dtype {self.dtype}, which ingest cannot write (only bool, integer, float and "
                    "complex); leave it out: give the store's arrays by path (STORE/images STORE/labels), or drop "
                    f"it from the Dataset first (ds.drop_vars({self.name.rpartition('/')[2]!r}))"
                )
            raise InputTypeError(
                f"{_where(part)} has dtype {part.dtype}, which cannot become a tensor; expected bool, integer, "
                "float or complex"
            )


def _where(part: _Part) -> str:
    inner = getattr(part, "key", None) or getattr(part, "dataset", None)
    return f"{part.path!r}" + (f" [{inner}]" if inner else "")


def _split_name(spec: str) -> tuple[str | None, str]:
    """``"x=data/a.npy"`` -> ``("x", "data/a.npy")``; a path that exists as given keeps any ``=`` in it."""
    url = spec.find("://")
    if os.path.exists(spec) or "=" not in spec or -1 < url < spec.find("="):
        return None, spec
    name, path = spec.split("=", 1)
    if not _NAME.fullmatch(name):
        raise InputError(
            f"source {spec!r}: {name!r} is not an array name; use letters, digits, '_', '.', '-' and '/' "
            "(NAME=PATH names the array a file goes into)"
        )
    return name, path


def _expand(path: str) -> list[str]:
    if os.path.exists(path) or "://" in path:
        return [path]
    if glob.has_magic(path):
        found = sorted(glob.glob(path))
        if not found:
            raise InputError(f"source {path!r}: no file matches this pattern")
        return found
    base = path.rpartition(":")[0]
    if base and os.path.isfile(base) and base.lower().endswith(HDF5_SUFFIXES):
        return [path]
    from daskfeed.inputs import missing_path_hint

    raise InputError(f"source {path!r} does not exist{missing_path_hint(path)}")


def _image_folder(path: str, image_size: tuple[int, int] | None, color_mode: str) -> list[_Source]:
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(
            f"folder {path!r} has no sub-folder; expected one sub-folder of images per class, as "
            "keras.utils.image_dataset_from_directory reads (cats/001.jpg, dogs/002.jpg, ...)"
        )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for top, dirs, names in os.walk(os.path.join(path, name)):
            dirs.sort()
            for f in sorted(names):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    files.append(os.path.join(top, f))
                    labels.append(label)
    if not files:
        raise InputError(
            f"folder {path!r} holds no image in its class sub-folders {classes}; expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    images = _Source("images", attrs={"class_names": classes})
    images.add(_ImagesPart(path, files, image_size, color_mode))
    labels_src = _Source("labels", attrs={"class_names": classes})
    labels_src.add(_LabelsPart(path, np.asarray(labels, np.int64)))
    return [images, labels_src]


def _hdf5(path: str, name: str | None, files: dict[str, Any]) -> list[tuple[str, _Part]]:
    h5py = _require("h5py", "hdf5", "reading HDF5 files")
    file_path, _, dataset = path.rpartition(":") if not os.path.isfile(path) else (path, "", "")
    if file_path not in files:
        try:
            files[file_path] = h5py.File(file_path, "r")
        except OSError as err:
            raise InputError(f"cannot read {file_path!r} as an HDF5 file: {err}") from err
    file = files[file_path]
    if dataset:
        if dataset not in file or not isinstance(file[dataset], h5py.Dataset):
            raise InputError(f"HDF5 file {file_path!r} has no dataset {dataset!r}")
        names = [dataset.strip("/")]
    else:
        names = []
        file.visititems(lambda key, obj: names.append(key) if isinstance(obj, h5py.Dataset) else None)
        if not names:
            raise InputError(f"HDF5 file {file_path!r} holds no dataset")
        if name is not None and len(names) > 1:
            raise InputError(
                f"source {name}={path}: the file holds {len(names)} datasets ({', '.join(names)}); name one, "
                f"as {name}={path}:DATASET"
            )
    return [(name or key, _H5Part(file_path, key, file)) for key in names]


def _objects(name: str | None, value: Any, meta: dict) -> list[tuple[str, _Part]] | None:
    """Parts of a zarr, dask, numpy or xarray object given from Python; None for a path."""
    import zarr

    from daskfeed.inputs import is_dataset

    if isinstance(value, (str, os.PathLike)):
        return None
    if is_dataset(value):
        return _dataset(name, value, meta)
    if isinstance(value, (zarr.Array, zarr.Group)):
        from daskfeed.inputs import open_zarr_node, store_location

        node, arrays = open_zarr_node(value)
        where = store_location(node) or str(node.store_path)
        if arrays is None:
            return [(name or node.basename or "array", _ZarrPart(f"{where}/{node.path}".rstrip("/"), node))]
        return _group_parts(node, arrays, name, f"{where}/{node.path}".rstrip("/"), meta)
    if _is_xarray(value) and name:
        return [(name, _ArrayPart(name, value))]
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__") and name:
        return [(name, _ArrayPart(name, value))]
    raise InputTypeError(
        f"source {name or ''!s} must be a path, a zarr array or group, an xarray Dataset, or (named, in a dict) a "
        f"dask, numpy or xarray array; got {type(value).__module__}.{type(value).__qualname__}"
    )


def _specs(sources: Any) -> list[tuple[str | None, Any]]:
    """``(name or None, path or object)`` for each source: a path, a list of them, or a dict of named ones."""
    from daskfeed.inputs import is_dataset

    if isinstance(sources, Mapping) and not is_dataset(sources):  # a Dataset maps only its data variables
        bad = [k for k in sources if not isinstance(k, str) or not _NAME.fullmatch(k)]
        if bad:
            raise InputError(f"source name {bad[0]!r} is not an array name; use letters, digits, '_', '.', '-', '/'")
        return list(sources.items())
    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    return [(None, spec) for spec in sources]


def _npz(path: str, name: str | None) -> list[tuple[str, _Part]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"cannot read {path!r} as a .npz file: {err}") from err
    with zf:
        members = [m for m in zf.namelist() if m.endswith(".npy")]
        if not members:
            raise InputError(f".npz file {path!r} holds no array")
        parts = [_NpzPart(path, zf, member) for member in members]
    return [(part.key if name is None else f"{name}/{part.key}", part) for part in parts]


def _file_parts(path: str, name: str | None, h5: dict, meta: dict) -> list[tuple[str, _Part]]:
    """The named parts of one path that is not a folder of images."""
    lower = path.lower()
    if _is_zarr(path):
        return _zarr(path, name, meta)
    if lower.endswith(".npy"):
        return [(name or os.path.splitext(os.path.basename(path))[0], _NpyPart(path))]
    if lower.endswith(".npz"):
        return _npz(path, name)
    if lower.rpartition(":")[0].endswith(HDF5_SUFFIXES) or lower.endswith(HDF5_SUFFIXES):
        return _hdf5(path, name, h5)
    raise InputError(
        f"source {path!r}: cannot tell how to read it; expected a .npy, .npz or HDF5 ({', '.join(HDF5_SUFFIXES)}) "
        "file, a zarr store or array, or a folder with one sub-folder of images per class"
    )


def _gather(sources: Any, image_size: tuple[int, int] | None, color_mode: str, h5: dict, meta: dict) -> list[_Source]:
    by_name: dict[str, _Source] = {}
    folders = 0
    for given, spec in _specs(sources):
        found = _objects(given, spec, meta)
        if found is None:
            name, raw = (given, os.fspath(spec)) if given else _split_name(os.fspath(spec))
            found = []
            for path in _expand(raw):
                if os.path.isdir(path) and not _is_zarr(path):
                    if name is not None:
                        raise InputError(
                            f"source {spec!r}: NAME= is for files; a folder of images becomes arrays 'images' "
                            "and 'labels'"
                        )
                    folders += 1
                    if folders > 1:
                        raise InputError("give at most one folder of images per ingest; each class is a sub-folder")
                    for src in _image_folder(path, image_size, color_mode):
                        if src.name in by_name:
                            raise InputError(f"array name {src.name!r} is given twice; rename the other with NAME=")
                        by_name[src.name] = src
                else:
                    found += _file_parts(path, name, h5, meta)
        for array_name, part in found:
            by_name.setdefault(array_name, _Source(array_name)).add(part)
    return list(by_name.values())


def _place_dims(arrays: list[_Source]) -> str | None:
    """Where each array lies when some have xarray's dimension names: which run along the samples and which
    are kept as they are, each with the dimension names to write. Returns the sample dimension, or None."""
    from daskfeed.inputs import dataset_roles

    if not any(a.dims for a in arrays):
        return None
    described = {a.name: (a.dims, a.shape, a.dtype.itemsize) for a in arrays if a.grouped or a.dims}
    roles = dataset_roles(described, {a.name for a in arrays if a.coordinate})
    if roles is None:  # only coordinates have names: no data variable to say where samples run
        return None
    for a in arrays:
        if a.name in roles.misplaced:
            axis = roles.misplaced[a.name]
            raise InputError(
                f"{a.what} has the sample dimension {roles.sample_dim!r} on axis {axis} (dims {a.dims}); ingest "
                f"needs it first: transpose it (ds[{a.name!r}].transpose({roles.sample_dim!r}, ...)) before ingest"
            )
        if a.grouped:
            a.kept = a.name in roles.kept
            a.dims = roles.dims[a.name]
        else:  # given alone: along the samples whatever its first dimension is called
            rest = (
                a.dims[1:] if a.dims else tuple(f"{a.name.replace('/', '_')}_dim_{i}" for i in range(1, len(a.shape)))
            )
            a.dims = (roles.sample_dim, *rest) if a.shape else ()
    return roles.sample_dim


def _length_hint(arrays: list[_Source], lengths: dict[str, int]) -> str:
    """How to give arrays of one length: by their paths in a store, or by naming files alike."""
    by_length: dict[int, int] = {}
    for a in arrays:
        by_length[lengths[a.name]] = by_length.get(lengths[a.name], 0) + a.nbytes
    common = max(by_length, key=lambda n: by_length[n])
    stored = sorted(
        (a for a in arrays if lengths[a.name] == common and isinstance(a.parts[0], _ZarrPart)), key=lambda a: a.name
    )
    if stored and any(isinstance(a.parts[0], _ZarrPart) for a in arrays if lengths[a.name] != common):
        paths = " ".join(
            a.parts[0].path if a.parts[0].path.endswith("/" + a.name) else f"{a.name}={a.parts[0].path}" for a in stored
        )
        return (
            f"Give the arrays of one length by their paths in the store: daskfeed ingest {paths} DEST (from Python, "
            "a dict of them)"
        )
    return "Name files of one array alike (x=a.npy x=b.npy) to put them end to end"


def _checked(arrays: list[_Source]) -> tuple[list[_Source], list[_Source], str | None]:
    """The arrays along the samples, once they are known to share one length, the arrays kept as they are,
    and the sample dimension (None without xarray's dimension names)."""
    if not arrays:
        raise InputError("no source given; expected .npy / .npz / HDF5 files, zarr stores or a folder of images")
    sample_dim = _place_dims(arrays)
    for a in arrays:
        a.check()
    along = [a for a in arrays if not a.kept]
    if not along:
        raise InputError(
            "no source runs along the samples: every array was kept as it is ("
            + ", ".join(a.name for a in arrays)
            + "); give the data variables too"
        )
    lengths = {s.name: s.shape[0] for s in along}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k!r} {v}" for k, v in lengths.items())
        raise InputError(
            f"every array of a store needs the same number of samples (axis 0); got {listed}. "
            + _length_hint(along, lengths)
        )
    if along[0].shape[0] == 0:
        raise InputError("the sources hold zero samples")
    return along, [a for a in arrays if a.kept], sample_dim


class SourceSet(contextlib.AbstractContextManager):
    """The arrays an ingest writes, gathered from its sources; leaving the ``with`` closes every file.

    ``arrays`` run along the samples (rechunked, shuffled together); ``kept`` are written as they are
    (coordinates and variables of a dataset along other dimensions); ``attrs`` are the attributes of the
    stores or Datasets given whole; ``sample_dim`` is the dimension samples run along when the sources have
    xarray's dimension names, and then every array carries its ``dims``.
    """

    def __init__(self, sources: Any, image_size: tuple[int, int] | None, color_mode: str):
        self._stack = contextlib.ExitStack()
        h5: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        self._stack.callback(lambda: [_quietly(f.close) for f in h5.values()])
        try:
            found = _gather(sources, image_size, color_mode, h5, meta)
            for array in found:
                for part in array.parts:
                    self._stack.callback(part.close)
            self.arrays, self.kept, self.sample_dim = _checked(found)
        except BaseException:
            self._stack.close()
            raise
        self.attrs: dict = meta.get("attrs", {})

    @property
    def every(self) -> list[_Source]:
        """Every array written: those along the samples, then those kept as they are."""
        return self.arrays + self.kept

    @property
    def n_samples(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def bytes_per_sample(self) -> int:
        return sum(a.row_bytes for a in self.arrays)

    @property
    def sequential(self) -> bool:
        """Whether a source reads fastest front to back (a compressed .npz member), so one worker keeps order."""
        return any(p.sequential for a in self.arrays for p in a.parts)

    @property
    def read_rows(self) -> int:
        """The most rows a source not held whole decodes together (a zarr or dask chunk); 1 for files read by
        range. Reads are cut at its multiples, so that each such chunk is decoded about once."""
        return max((a.read_rows for a in self.arrays if not a.held), default=1)

    def hold_small(self, memory: int) -> None:
        """Hold whole, read once, the arrays whose chunks are longer than the heaviest array's and that take
        under an eighth of ``memory``: labels in one chunk (dask's and xarray's default for a small array) then
        no longer make every read span the whole store, nor get decoded again for every run of rows."""
        heavy = max(self.arrays, key=lambda a: a.row_bytes)
        for a in self.arrays:
            a.held = a is not heavy and a.read_rows > heavy.read_rows and a.nbytes <= memory // 8

    def fingerprint(self) -> dict:
        return {a.name: [p.fingerprint() for p in a.parts] for a in self.every}

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _quietly(close: Any) -> None:
    with contextlib.suppress(Exception):
        close()

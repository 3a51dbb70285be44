"""ingest: .npy / .npz / HDF5 files and folders of images -> one chunked, compressed zarr store."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import re
import shutil
import struct
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import InputError, InputTypeError
from daskfeed.inputs import TENSOR_KINDS
from daskfeed.loader import parse_bytes
from daskfeed.plan import format_bytes

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_INGEST_MEMORY",
    "IMAGE_SUFFIXES",
    "IngestReport",
    "ingest",
    "partial_path",
    "permutation",
]

#: Decoded bytes per chunk (all arrays of a sample together) when the chunk length is not given: a 1 GiB
#: loader window then holds ~85 chunks, and per-chunk overhead stays under ~2% of the decode.
DEFAULT_CHUNK_BYTES = 4 * 2**20
#: Memory that ``shuffle=True`` may use to place one bucket of samples (it holds two copies of a bucket).
DEFAULT_INGEST_MEMORY = 1 * 2**30
#: What ``keras.utils.image_dataset_from_directory`` reads, plus TIFF and WebP, which Pillow reads too.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nc")
COMPRESSIONS = ("zstd", "lz4", "none")
_COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
_MANIFEST_VERSION = 1


def partial_path(dest: str | os.PathLike) -> str:
    """Where an unfinished ingest into ``dest`` keeps its work: beside ``dest``, never looking like a store."""
    return os.fspath(dest).rstrip("/\\") + ".daskfeed-partial"


# -- reading the sources ------------------------------------------------------------------------------------


class _Part:
    """One file's contribution to one array: its rows in order, read by ranges."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    sequential = False  # True when reading out of order is slow (a compressed .npz member)

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> list:
        st = os.stat(self.path)
        return [os.path.abspath(self.path), st.st_size, st.st_mtime_ns, list(self.shape), str(self.dtype)]

    def close(self) -> None:
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
        self._mode, channels = _COLOR_MODES[color_mode]
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


@dataclass
class _Source:
    """One array of the store: its parts, end to end along the sample axis."""

    name: str
    parts: list[_Part] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        pieces, offset = [], 0
        for part in self.parts:
            n = part.shape[0]
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                pieces.append(part.read(lo - offset, hi - offset))
            offset += n
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def add(self, part: _Part) -> None:
        if len(part.shape) == 0:
            raise InputError(f"{_where(part)} is a 0-d array; expected at least one axis, the sample axis (axis 0)")
        if part.dtype.kind not in TENSOR_KINDS:
            raise InputTypeError(
                f"{_where(part)} has dtype {part.dtype}, which cannot become a tensor; expected bool, integer, "
                "float or complex"
            )
        if self.parts:
            first = self.parts[0]
            if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
                raise InputError(
                    f"cannot put the files of array {self.name!r} end to end: {_where(first)} holds "
                    f"{first.shape} {first.dtype} and {_where(part)} holds {part.shape} {part.dtype}; every "
                    "file of one array needs the same shape after axis 0 (samples) and the same dtype"
                )
        self.parts.append(part)


def _where(part: _Part) -> str:
    inner = getattr(part, "key", None) or getattr(part, "dataset", None)
    return f"{part.path!r}" + (f" [{inner}]" if inner else "")


def _split_name(spec: str) -> tuple[str | None, str]:
    """``"x=data/a.npy"`` -> ``("x", "data/a.npy")``; a path that exists as given keeps any ``=`` in it."""
    if os.path.exists(spec) or "=" not in spec:
        return None, spec
    name, path = spec.split("=", 1)
    if not _NAME.fullmatch(name):
        raise InputError(
            f"source {spec!r}: {name!r} is not an array name; use letters, digits, '_', '.', '-' and '/' "
            "(NAME=PATH names the array a file goes into)"
        )
    return name, path


def _expand(path: str) -> list[str]:
    if os.path.exists(path):
        return [path]
    if glob.has_magic(path):
        found = sorted(glob.glob(path))
        if not found:
            raise InputError(f"source {path!r}: no file matches this pattern")
        return found
    base = path.rpartition(":")[0]
    if base and os.path.isfile(base) and base.lower().endswith(HDF5_SUFFIXES):
        return [path]
    raise InputError(f"source {path!r} does not exist")


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


def _gather(sources: list[str], image_size: tuple[int, int] | None, color_mode: str, h5: dict) -> list[_Source]:
    by_name: dict[str, _Source] = {}
    folders = 0

    def add(name: str, part: _Part) -> None:
        by_name.setdefault(name, _Source(name)).add(part)

    for spec in sources:
        if not isinstance(spec, (str, os.PathLike)):
            raise InputTypeError(f"sources must be paths (str), got {type(spec).__name__} {spec!r}")
        name, raw = _split_name(os.fspath(spec))
        for path in _expand(raw):
            lower = path.lower()
            if os.path.isdir(path):
                if name is not None:
                    raise InputError(
                        f"source {spec!r}: NAME= is for files; a folder of images becomes arrays 'images' and 'labels'"
                    )
                folders += 1
                if folders > 1:
                    raise InputError("give at most one folder of images per ingest; each class is a sub-folder")
                for src in _image_folder(path, image_size, color_mode):
                    if src.name in by_name:
                        raise InputError(f"array name {src.name!r} is given twice; rename the other with NAME=")
                    by_name[src.name] = src
            elif lower.endswith(".npy"):
                add(name or os.path.splitext(os.path.basename(path))[0], _NpyPart(path))
            elif lower.endswith(".npz"):
                try:
                    zf = zipfile.ZipFile(path)
                except (zipfile.BadZipFile, OSError) as err:
                    raise InputError(f"cannot read {path!r} as a .npz file: {err}") from err
                with zf:
                    members = [m for m in zf.namelist() if m.endswith(".npy")]
                    if not members:
                        raise InputError(f".npz file {path!r} holds no array")
                    for member in members:
                        part = _NpzPart(path, zf, member)
                        add(part.key if name is None else f"{name}/{part.key}", part)
            elif lower.rpartition(":")[0].endswith(HDF5_SUFFIXES) or lower.endswith(HDF5_SUFFIXES):
                for array_name, part in _hdf5(path, name, h5):
                    add(array_name, part)
            else:
                raise InputError(
                    f"source {path!r}: cannot tell how to read it; expected a .npy, .npz or HDF5 "
                    f"({', '.join(HDF5_SUFFIXES)}) file, or a folder with one sub-folder of images per class"
                )
    if not by_name:
        raise InputError("no source given; expected .npy / .npz / HDF5 files or a folder of images")
    arrays = list(by_name.values())
    lengths = {s.name: s.shape[0] for s in arrays}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k!r} {v}" for k, v in lengths.items())
        raise InputError(
            f"every array of a store needs the same number of samples (axis 0); got {listed}. Name files of one "
            "array alike (x=a.npy x=b.npy) to put them end to end"
        )
    if arrays[0].shape[0] == 0:
        raise InputError("the sources hold zero samples")
    return arrays


# -- shuffling out of core ------------------------------------------------------------------------------------


def _mix(v: np.ndarray, key: int) -> np.ndarray:
    """A 64-bit mixing function (splitmix64's finaliser), vectorised."""
    with np.errstate(over="ignore"):
        v = (v ^ np.uint64(key)) * np.uint64(0x9E3779B97F4A7C15)
        v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return v ^ (v >> np.uint64(31))


def permutation(index: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Where each sample ``index`` goes in a seeded random permutation of ``range(n)``, in O(len(index)) memory.

    A Feistel network over the smallest even power of two >= n, walked until it lands below n, so no table
    of n entries is ever built: samples of a store larger than RAM are placed block by block.

    Examples
    --------
    >>> p = permutation(np.arange(10), 10, seed=0)
    >>> sorted(p.tolist()) == list(range(10))
    True
    """
    half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
    mask = np.uint64((1 << half) - 1)
    keys = [int(k) for k in np.random.default_rng(seed).integers(0, 2**63, 6)]
    out = np.asarray(index, np.uint64).copy()
    todo = np.arange(out.size)
    while todo.size:
        v = out[todo]
        left, right = v >> np.uint64(half), v & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        v = (left << np.uint64(half)) | right
        out[todo] = v
        todo = todo[v >= np.uint64(n)]  # cycle-walk: at most 4x the domain, so few rounds
    return out.astype(np.int64)


# -- progress --------------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal; a line every 10% elsewhere (logs, CI)."""

    def __init__(self, label: str, total: int, unit_bytes: int, enabled: bool, stream: Any = None):
        self.label, self.total, self.unit_bytes, self.enabled = label, total, unit_bytes, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.started, self.shown, self.decile = 0, time.perf_counter(), 0.0, 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.perf_counter()
            decile = 10 * self.done // max(self.total, 1)
            if self.enabled and ((self.tty and now - self.shown > 0.2) or (not self.tty and decile > self.decile)):
                self.shown, self.decile = now, decile
                self._show(now, end="\r" if self.tty else "\n")

    def _show(self, now: float, end: str) -> None:
        frac = self.done / max(self.total, 1)
        seconds = max(now - self.started, 1e-9)
        bar = "#" * int(frac * 24)
        mb_s = self.done * self.unit_bytes / seconds / 1e6
        print(
            f"{self.label:<10} {frac:4.0%} |{bar:<24}| {self.done:,}/{self.total:,} samples  {mb_s:,.0f} MB/s",
            end=end,
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled and (self.tty or self.decile < 10):
            self._show(time.perf_counter(), end="\n")


# -- writing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestReport:
    """What :func:`ingest` wrote.

    Attributes
    ----------
    store : str
        The path of the finished store.
    arrays : dict of str to tuple
        Each array's ``(shape, dtype)``.
    chunk_length : int
        Samples per chunk (the same for every array, so chunk boundaries line up).
    shuffled : bool
        Whether samples were written in a random permutation; ``seed`` is its seed.
    chunks_written, chunks_resumed : int
        Chunk rows written by this call, and those an interrupted earlier call had written already.
    decoded_bytes, stored_bytes : int
        Size of the data, decoded and as stored.
    seconds : float
        Wall time of this call.
    """

    store: str
    arrays: dict[str, tuple[tuple[int, ...], str]]
    samples: int
    chunk_length: int
    shuffled: bool
    seed: int | None
    compression: str
    chunks_written: int
    chunks_resumed: int
    decoded_bytes: int
    stored_bytes: int
    seconds: float
    class_names: list[str] | None = None

    def __str__(self) -> str:
        order = f"shuffled (seed {self.seed})" if self.shuffled else "in source order"
        lines = [
            f"wrote {self.store}: {self.samples:,} samples in chunks of {self.chunk_length:,}, {order}, "
            f"{format_bytes(self.decoded_bytes)} decoded, {format_bytes(self.stored_bytes)} stored "
            f"({self.compression}), in {self.seconds:.1f}s"
        ]
        if self.chunks_resumed:
            lines[0] += f"; {self.chunks_resumed} chunk rows were already written by an interrupted run"
        for name, (shape, dtype) in self.arrays.items():
            lines.append(f"  {name}: {shape} {dtype}")
        if self.class_names is not None:
            lines.append(f"  class_names: {self.class_names}")
        return "\n".join(lines)


def _compressors(compression: str) -> Any:
    from zarr.codecs import BloscCodec

    if compression == "zstd":
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    if compression == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return None


def _check_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise InputError(f"image_size must be (height, width), two positive ints, got {image_size!r}")


class _Journal:
    """Append-only record of finished steps, so that a rerun after an interruption skips them."""

    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.done: set[str] = set()
        if os.path.exists(path):
            with open(path) as f:
                self.done = {line.strip() for line in f if line.endswith("\n")}  # a torn last line is not done
        self._file = open(path, "a")  # noqa: SIM115  closed in close()

    def mark(self, step: str) -> None:
        with self.lock:
            self._file.write(step + "\n")
            self._file.flush()
            self.done.add(step)

    def close(self) -> None:
        self._file.close()


def _run(tasks: list[tuple[str, Any]], workers: int | None) -> None:
    """Run ``(name, fn)`` tasks on dask's threaded scheduler; with one worker, in the order given."""
    if workers == 1:  # dask would run independent tasks backwards
        for _name, fn in tasks:
            fn()
        return
    import dask.threaded

    graph = {name: (fn,) for name, fn in tasks}
    if graph:
        dask.threaded.get(graph, list(graph), num_workers=workers)


def ingest(
    sources: str | os.PathLike | list[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    chunk_length: int | None = None,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    compression: str = "zstd",
    shuffle: bool = False,
    seed: int | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "rgb",
    memory: int | str = DEFAULT_INGEST_MEMORY,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> IngestReport:
    """Write ``.npy`` / ``.npz`` / HDF5 files or a folder of images into one chunked, compressed zarr store.

    Every array gets the same chunk length on the sample axis (axis 0) and keeps its other axes whole, so
    chunk boundaries line up and each chunk read yields whole samples. Files are read in ranges (``.npy``
    and stored ``.npz`` members memory-mapped, compressed members streamed, HDF5 by slices, images one file at
    a time), so memory stays bounded whatever the size of the input. The store is built in
    ``DEST.daskfeed-partial`` and renamed to ``dest`` only once complete: an interrupted ingest never leaves a
    store that looks complete, and calling ``ingest`` again with the same arguments finishes it.

    Parameters
    ----------
    sources : path or list of paths
        ``.npy`` files (one array each, named after the file: ``x.npy`` -> ``"x"``), ``.npz`` files (one array
        per member), HDF5 files (every dataset, or ``file.h5:path/to/dataset``), or one folder with a sub-folder
        of images per class (-> ``"images"`` uint8 and ``"labels"`` int64, with ``class_names`` in the
        attributes). ``NAME=PATH`` names the array; files with the same name are put end to end in the order
        given, and glob patterns (``"x=parts/x_*.npy"``) expand in sorted order.
    dest : path
        The zarr store to write; a local directory.
    chunk_length : int, optional
        Samples per chunk. By default, as many as fit ``chunk_bytes`` decoded (all arrays of a sample together).
    chunk_bytes : int or str, default 4 MiB
        Target decoded size of one chunk row when ``chunk_length`` is not given.
    compression : {"zstd", "lz4", "none"}, default "zstd"
        Blosc with zstd (level 3) or lz4 (level 5), both with byte shuffle; or no compression.
    shuffle : bool, default False
        Write the samples in a seeded random permutation (the same one for every array). Later epochs then mix
        well at ``reads_per_chunk=1``. Done out of core in two passes: samples are scattered into buckets on disk
        beside ``dest`` (needs free disk for one decoded copy), then each bucket is placed in ``memory``.
    seed : int, optional
        Seed of the permutation; drawn at random (and reported) when not given.
    image_size : (height, width), optional
        Resize every image to this size. Without it all images must have the size of the first.
    color_mode : {"rgb", "grayscale", "rgba"}, default "rgb"
        Channels images are converted to, as in Keras.
    memory : int or str, default 1 GiB
        Memory a shuffled ingest may use to place one bucket of samples.
    workers : int, optional
        Threads reading and writing chunks (dask's threaded scheduler; its default: one per core).
    overwrite : bool, default False
        Replace an existing ``dest`` once the new store is complete. Without it an existing ``dest`` is an error.
    progress : bool, default False
        Show a progress bar on standard error (the ``daskfeed ingest`` command shows it).

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        A source is missing or unreadable, arrays disagree on their length, the files of one array on their
        shape or dtype, ``dest`` exists without ``overwrite``, or a knob is out of range.

    Examples
    --------
    >>> import numpy as np, tempfile, os, daskfeed
    >>> tmp = tempfile.mkdtemp()
    >>> np.save(os.path.join(tmp, "x.npy"), np.arange(60, dtype="f4").reshape(20, 3))
    >>> np.save(os.path.join(tmp, "y.npy"), np.arange(20) % 2)
    >>> report = daskfeed.ingest([os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")],
    ...                          os.path.join(tmp, "train.zarr"), chunk_length=8)
    >>> report.arrays["x"], report.chunk_length
    (((20, 3), 'float32'), 8)
    >>> daskfeed.open_zarr(os.path.join(tmp, "train.zarr"))["x"].chunks
    ((8, 8, 4), (3,))
    """
    started = time.perf_counter()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)):
        raise InputTypeError(f"sources must be a path or a list of paths, got {type(sources).__name__}")
    if not isinstance(dest, (str, os.PathLike)) or "://" in os.fspath(dest):
        raise InputError(f"dest must be a local path (the store is renamed into place when complete), got {dest!r}")
    dest = os.fspath(dest).rstrip("/\\")
    if compression not in COMPRESSIONS:
        raise InputError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if color_mode not in _COLOR_MODES:
        raise InputError(f"color_mode must be one of {', '.join(_COLOR_MODES)}, got {color_mode!r}")
    if not isinstance(shuffle, bool):
        raise InputTypeError(f"shuffle must be True or False, got {shuffle!r}")
    for knob, value in (("chunk_length", chunk_length), ("workers", workers), ("seed", seed)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
            raise InputError(f"{knob} must be a non-negative int or None, got {value!r}")
    if chunk_length == 0 or workers == 0:
        raise InputError(f"chunk_length and workers must be at least 1, got {chunk_length!r} and {workers!r}")
    target = parse_bytes(chunk_bytes, "chunk_bytes")
    memory_bytes = parse_bytes(memory, "memory")
    size = _check_size(image_size)
    if os.path.exists(dest) and not overwrite:
        raise InputError(
            f"dest {dest!r} already exists; pass overwrite=True (--overwrite) to replace it once the new store "
            "is complete, or choose another path"
        )
    if shuffle and seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31))
    elif not shuffle:
        seed = None  # only a shuffle has a seed

    h5_files: dict[str, Any] = {}
    arrays: list[_Source] = []
    try:
        arrays = _gather(list(sources), size, color_mode, h5_files)
        n = arrays[0].shape[0]
        per_sample = sum(a.row_bytes for a in arrays)
        if any(p.sequential for a in arrays for p in a.parts):
            workers = 1  # a streamed source reads fastest front to back, and one worker keeps that order
        length = int(chunk_length) if chunk_length else max(1, target // max(per_sample, 1))
        length = min(length, n)
        options = {
            "chunk_length": length,
            "compression": compression,
            "shuffle": shuffle,
            "seed": seed,
            "image_size": size,
            "color_mode": color_mode,
        }
        manifest = {
            "version": _MANIFEST_VERSION,
            "arrays": {a.name: [p.fingerprint() for p in a.parts] for a in arrays},
            "options": options,
        }
        work = partial_path(dest)
        restarted = _prepare(work, manifest)
        journal = _Journal(os.path.join(work, "journal"))
        try:
            store_path = os.path.join(work, "store.zarr")
            root = _open_target(store_path, arrays, length, compression, restarted)
            targets = [root[a.name] for a in arrays]
            n_chunks = math.ceil(n / length)
            if shuffle:
                written = _write_shuffled(arrays, targets, work, journal, length, seed, memory_bytes, workers, progress)
            else:
                written = _write_in_order(arrays, targets, journal, length, workers, progress)
            class_names = next((a.attrs["class_names"] for a in arrays if "class_names" in a.attrs), None)
            info = {
                "shuffled": shuffle,
                "seed": seed,
                "chunk_length": length,
                "sources": [os.fspath(s) for s in sources],
            }
            for src, target in zip(arrays, targets):
                target.attrs.update({**src.attrs, "daskfeed": {"shuffled": shuffle}})
            root.attrs.update({"daskfeed": info, **({"class_names": class_names} if class_names else {})})
            stored = sum(t.nbytes_stored() for t in targets)
        finally:
            journal.close()
        _move_into_place(store_path, dest)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        for src in arrays:
            for part in src.parts:
                part.close()
        for f in h5_files.values():
            with contextlib.suppress(Exception):
                f.close()
    return IngestReport(
        store=dest,
        arrays={a.name: (a.shape, str(a.dtype)) for a in arrays},
        samples=n,
        chunk_length=length,
        shuffled=shuffle,
        seed=seed,
        compression=compression,
        chunks_written=written,
        chunks_resumed=n_chunks - written,
        decoded_bytes=n * per_sample,
        stored_bytes=stored,
        seconds=time.perf_counter() - started,
        class_names=class_names,
    )


def _prepare(work: str, manifest: dict) -> bool:
    """Make or reuse the work folder; True when it starts afresh (no earlier run with the same arguments)."""
    path = os.path.join(work, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            try:
                same = json.load(f) == json.loads(json.dumps(manifest))
            except ValueError:
                same = False
        if same:
            return False
        shutil.rmtree(work)
    elif os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f)
    os.replace(path + ".tmp", path)
    return True


def _open_target(path: str, arrays: list[_Source], length: int, compression: str, fresh: bool) -> Any:
    import zarr

    if not fresh and os.path.exists(os.path.join(path, "zarr.json")):
        root = zarr.open_group(path, mode="r+")
        if all(a.name in root for a in arrays):
            return root
    root = zarr.open_group(path, mode="w")
    for a in arrays:
        root.create_array(
            a.name,
            shape=a.shape,
            chunks=(length, *a.shape[1:]),
            dtype=a.dtype,
            compressors=_compressors(compression),
            fill_value=0,
        )
    return root


def _write_in_order(arrays, targets, journal: _Journal, length: int, workers, progress: bool) -> int:
    n = arrays[0].shape[0]
    todo = [i for i in range(math.ceil(n / length)) if f"chunk {i}" not in journal.done]
    bar = _Progress("ingest", n, sum(a.row_bytes for a in arrays), progress)
    bar.add(n - sum(min(length, n - i * length) for i in todo))

    def write(i: int) -> None:
        start, stop = i * length, min(n, (i + 1) * length)
        for src, target in zip(arrays, targets):
            target[start:stop] = src.read(start, stop)
        journal.mark(f"chunk {i}")
        bar.add(stop - start)

    _run([(f"ingest-{i:012d}", functools.partial(write, i)) for i in todo], workers)
    bar.close()
    return len(todo)


def _write_shuffled(arrays, targets, work, journal: _Journal, length, seed, memory_bytes, workers, progress) -> int:
    """Two passes: scatter samples into buckets on disk by where they land, then place each bucket in memory."""
    n = arrays[0].shape[0]
    per_sample = sum(a.row_bytes for a in arrays) + 8
    # A bucket is a run of whole output chunks; placing it holds its samples twice (as read, and in order).
    bucket = max(length, (memory_bytes // (2 * per_sample)) // length * length)
    n_buckets = math.ceil(n / bucket)
    folder = os.path.join(work, "buckets")
    if "scattered" not in journal.done:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        locks = [threading.Lock() for _ in range(n_buckets)]
        bar = _Progress("scatter", n, per_sample, progress)

        def scatter(i: int) -> None:
            start, stop = i * length, min(n, (i + 1) * length)
            where = permutation(np.arange(start, stop), n, seed)
            which = where // bucket
            order = np.argsort(which, kind="stable")
            cuts = np.searchsorted(which[order], np.arange(n_buckets + 1))
            blocks = [src.read(start, stop)[order] for src in arrays]
            where = where[order]
            for k in range(n_buckets):
                lo, hi = cuts[k], cuts[k + 1]
                if lo == hi:
                    continue
                with locks[k]:
                    with open(os.path.join(folder, f"{k}.where"), "ab") as f:
                        where[lo:hi].tofile(f)
                    for j, block in enumerate(blocks):
                        with open(os.path.join(folder, f"{k}.{j}"), "ab") as f:
                            np.ascontiguousarray(block[lo:hi]).tofile(f)
            bar.add(stop - start)

        _run([(f"scatter-{i:012d}", functools.partial(scatter, i)) for i in range(math.ceil(n / length))], workers)
        bar.close()
        journal.mark("scattered")
    bar = _Progress("place", n, per_sample, progress)
    written = 0
    for k in range(n_buckets):
        lo, hi = k * bucket, min(n, (k + 1) * bucket)
        if f"bucket {k}" in journal.done:
            bar.add(hi - lo)
            continue
        where = np.fromfile(os.path.join(folder, f"{k}.where"), np.int64) - lo
        if where.size != hi - lo:
            raise InputError(f"ingest work file {folder}/{k}.where is incomplete; delete {work!r} and rerun")
        for j, (src, target) in enumerate(zip(arrays, targets)):
            rows = np.fromfile(os.path.join(folder, f"{k}.{j}"), src.dtype).reshape((hi - lo, *src.shape[1:]))
            placed = np.empty_like(rows)
            placed[where] = rows
            del rows
            target[lo:hi] = placed
            del placed
        journal.mark(f"bucket {k}")
        for f in glob.glob(os.path.join(folder, f"{k}.*")):
            os.remove(f)
        written += math.ceil((hi - lo) / length)
        bar.add(hi - lo)
    bar.close()
    return written


def _move_into_place(store: str, dest: str) -> None:
    """Rename the finished store to ``dest``; an old ``dest`` (with ``overwrite``) goes only after that."""
    old = None
    if os.path.exists(dest):
        old = dest + ".daskfeed-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(store, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""ingest: .npy / .npz / HDF5 files and folders of images -> one chunked, compressed zarr store."""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.utils import format_bytes

from daskfeed._sources import (
    COLOR_MODES,
    IMAGE_SUFFIXES,
    SourceSet,
    _NpyPart,  # noqa: F401  (tests patch its reads)
)
from daskfeed.errors import InputError, InputTypeError
from daskfeed.options import parse_bytes

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_INGEST_MEMORY",
    "IMAGE_SUFFIXES",
    "IngestOptions",
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
COMPRESSIONS = ("zstd", "lz4", "none")
_MANIFEST_VERSION = 2


def partial_path(dest: str | os.PathLike) -> str:
    """Where an unfinished ingest into ``dest`` keeps its work: beside ``dest``, never looking like a store."""
    return os.fspath(dest).rstrip("/\\") + ".daskfeed-partial"


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


def _compressors(compression: str) -> list[Any]:
    """The array's bytes codecs: the compressor, then a crc32c checksum, so a corrupt chunk fails to decode."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    blosc = {
        "zstd": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
        "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    }
    return [*blosc.get(compression, []), Crc32cCodec()]


def _every_chunk(root: Any, name: str) -> Any:
    """Array ``name`` of ``root``, opened to write every chunk, fill values too (zarr leaves those out by
    default): a chunk missing from a store daskfeed wrote is then damage, and the loader refuses it."""
    return root[name].with_config({"write_empty_chunks": True})


@dataclass(frozen=True)
class IngestOptions:
    """The knobs of :func:`ingest`, validated once; see there for what each does."""

    chunk_length: int | None = None
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    shuffle: bool = False
    seed: int | None = None
    image_size: tuple[int, int] | None = None
    color_mode: str = "rgb"
    memory: int | str = DEFAULT_INGEST_MEMORY
    workers: int | None = None
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.compression not in COMPRESSIONS:
            raise InputError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.color_mode not in COLOR_MODES:
            raise InputError(f"color_mode must be one of {', '.join(COLOR_MODES)}, got {self.color_mode!r}")
        for knob in ("shuffle", "overwrite", "progress"):
            if not isinstance(getattr(self, knob), bool):
                raise InputTypeError(f"{knob} must be True or False, got {getattr(self, knob)!r}")
        for knob in ("chunk_length", "workers", "seed"):
            value = getattr(self, knob)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
                raise InputError(f"{knob} must be a non-negative int or None, got {value!r}")
        if self.chunk_length == 0 or self.workers == 0:
            raise InputError(
                f"chunk_length and workers must be at least 1, got {self.chunk_length!r} and {self.workers!r}"
            )
        put("chunk_bytes", parse_bytes(self.chunk_bytes, "chunk_bytes"))
        put("memory", parse_bytes(self.memory, "memory"))
        put("image_size", _check_size(self.image_size))
        if self.shuffle and self.seed is None:
            put("seed", int(np.random.default_rng().integers(0, 2**31)))
        elif not self.shuffle:
            put("seed", None)  # only a shuffle has a seed

    def chunk_length_for(self, sources: SourceSet) -> int:
        length = self.chunk_length or max(1, self.chunk_bytes // max(sources.bytes_per_sample, 1))
        return int(min(length, sources.n_samples))

    def decisive(self, length: int) -> dict:
        """The options that decide what the store holds: a rerun with other values starts afresh."""
        keep = ("compression", "shuffle", "seed", "image_size", "color_mode")
        return {"chunk_length": length, **{k: v for k, v in dataclasses.asdict(self).items() if k in keep}}


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


class _WorkFolder:
    """``DEST.daskfeed-partial``: the store being built, its manifest and journal, the buckets of a shuffle.

    :meth:`commit` renames the finished store to ``dest`` (an old ``dest`` goes only after that) and removes
    the folder, so a store at ``dest`` is always complete.
    """

    def __init__(self, dest: str):
        self.dest = dest
        self.path = partial_path(dest)
        self.store = os.path.join(self.path, "store.zarr")
        self.buckets = os.path.join(self.path, "buckets")

    def prepare(self, manifest: dict) -> bool:
        """Make or reuse the folder; True when it starts afresh (no earlier run with the same manifest)."""
        path = os.path.join(self.path, "manifest.json")
        if os.path.exists(path):
            with open(path) as f:
                try:
                    same = json.load(f) == json.loads(json.dumps(manifest))
                except ValueError:
                    same = False
            if same:
                return False
            shutil.rmtree(self.path)
        elif os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.makedirs(self.path)
        with open(path + ".tmp", "w") as f:
            json.dump(manifest, f)
        os.replace(path + ".tmp", path)
        return True

    def journal(self) -> _Journal:
        return _Journal(os.path.join(self.path, "journal"))

    def commit(self) -> None:
        old = None
        if os.path.exists(self.dest):
            old = self.dest + ".daskfeed-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dest, old)
        os.replace(self.store, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class _Job:
    """What a writer needs: the sources, the arrays they go to, the journal and how to cut the work."""

    sources: SourceSet
    targets: list[Any]
    journal: _Journal
    work: _WorkFolder
    options: IngestOptions
    length: int  # samples per output chunk
    block: int  # output chunks read from the sources together (a run of what the sources decode together)
    workers: int | None

    @property
    def n(self) -> int:
        return self.sources.n_samples

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.length)

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Samples of output chunks ``first`` to ``last - 1``."""
        return first * self.length, min(self.n, last * self.length)

    def blocks(self) -> list[tuple[int, int]]:
        """Runs ``(first, last)`` of output chunks that are read from the sources in one go."""
        return [(b, min(b + self.block, self.n_chunks)) for b in range(0, self.n_chunks, self.block)]


def _block_chunks(sources: SourceSet, length: int, options: IngestOptions, workers: int) -> int:
    """Output chunks to read together, so that a source chunk (zarr's, dask's) is decoded about once.

    Reading a zarr array chunked by 25,000 in runs of 1,000 would decode each of its chunks 25 times; runs of
    at least one source chunk (up to four, within ``memory``) decode it once, or twice where a run's edge cuts it.
    """
    rows = sources.read_rows
    if rows <= length:
        return 1
    fit = options.memory // (2 * workers * max(1, sources.bytes_per_sample))
    return math.ceil(max(rows, min(4 * rows, fit)) / length)


def _run(tasks: list[Any], workers: int | None) -> None:
    """Run callables on ``workers`` threads (default: one per core); with one worker, in order, here.

    The first failure (or Ctrl-C) cancels the tasks not started and is raised once the running ones end.
    """
    if workers == 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count(), thread_name_prefix="daskfeed-ingest") as pool:
        futures = [pool.submit(task) for task in tasks]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            for future in futures:
                future.cancel()
        for future in done:
            future.result()


def _write_in_order(job: _Job) -> int:
    todo = [i for i in range(job.n_chunks) if f"chunk {i}" not in job.journal.done]
    bar = _Progress("ingest", job.n, job.sources.bytes_per_sample, job.options.progress)
    bar.add(job.n - sum(job.span(i, i + 1)[1] - job.span(i, i + 1)[0] for i in todo))

    def write(first: int, last: int) -> None:
        missing = [i for i in range(first, last) if f"chunk {i}" not in job.journal.done]
        start, stop = job.span(missing[0], missing[-1] + 1)
        rows = [src.read(start, stop) for src in job.sources.arrays]
        for i in missing:
            lo, hi = job.span(i, i + 1)
            for data, target in zip(rows, job.targets):
                target[lo:hi] = data[lo - start : hi - start]
            job.journal.mark(f"chunk {i}")
            bar.add(hi - lo)

    runs = [(a, b) for a, b in job.blocks() if any(f"chunk {i}" not in job.journal.done for i in range(a, b))]
    _run([functools.partial(write, a, b) for a, b in runs], job.workers)
    bar.close()
    return len(todo)


def _scatter(job: _Job, bucket: int) -> None:
    """Pass 1 of a shuffle: each sample goes to the bucket file of where it lands in the permutation."""
    n_buckets = math.ceil(job.n / bucket)
    shutil.rmtree(job.work.buckets, ignore_errors=True)
    os.makedirs(job.work.buckets)
    locks = [threading.Lock() for _ in range(n_buckets)]
    bar = _Progress("scatter", job.n, job.sources.bytes_per_sample + 8, job.options.progress)

    def scatter(first: int, last: int) -> None:
        start, stop = job.span(first, last)
        where = permutation(np.arange(start, stop), job.n, job.options.seed)
        which = where // bucket
        order = np.argsort(which, kind="stable")
        cuts = np.searchsorted(which[order], np.arange(n_buckets + 1))
        blocks = [src.read(start, stop)[order] for src in job.sources.arrays]
        where = where[order]
        for k in range(n_buckets):
            lo, hi = cuts[k], cuts[k + 1]
            if lo == hi:
                continue
            with locks[k]:
                with open(os.path.join(job.work.buckets, f"{k}.where"), "ab") as f:
                    where[lo:hi].tofile(f)
                for j, block in enumerate(blocks):
                    with open(os.path.join(job.work.buckets, f"{k}.{j}"), "ab") as f:
                        np.ascontiguousarray(block[lo:hi]).tofile(f)
        bar.add(stop - start)

    _run([functools.partial(scatter, a, b) for a, b in job.blocks()], job.workers)
    bar.close()
    job.journal.mark("scattered")


def _place(job: _Job, bucket: int) -> int:
    """Pass 2 of a shuffle: each bucket, a run of whole output chunks, is put in order in memory and written."""
    bar = _Progress("place", job.n, job.sources.bytes_per_sample + 8, job.options.progress)
    written = 0
    for k in range(math.ceil(job.n / bucket)):
        lo, hi = k * bucket, min(job.n, (k + 1) * bucket)
        if f"bucket {k}" in job.journal.done:
            bar.add(hi - lo)
            continue
        folder = job.work.buckets
        where = np.fromfile(os.path.join(folder, f"{k}.where"), np.int64) - lo
        if where.size != hi - lo:
            raise InputError(f"ingest work file {folder}/{k}.where is incomplete; delete {job.work.path!r} and rerun")
        for j, (src, target) in enumerate(zip(job.sources.arrays, job.targets)):
            rows = np.fromfile(os.path.join(folder, f"{k}.{j}"), src.dtype).reshape((hi - lo, *src.shape[1:]))
            placed = np.empty_like(rows)
            placed[where] = rows
            del rows
            target[lo:hi] = placed
            del placed
        job.journal.mark(f"bucket {k}")
        for f in glob.glob(os.path.join(folder, f"{k}.*")):
            os.remove(f)
        written += math.ceil((hi - lo) / job.length)
        bar.add(hi - lo)
    bar.close()
    return written


def _write_shuffled(job: _Job) -> int:
    """Two passes: scatter samples into buckets on disk by where they land, then place each bucket in memory."""
    per_sample = job.sources.bytes_per_sample + 8
    # A bucket is a run of whole output chunks; placing it holds its samples twice (as read, and in order).
    bucket = max(job.length, (job.options.memory // (2 * per_sample)) // job.length * job.length)
    if "scattered" not in job.journal.done:
        _scatter(job, bucket)
    return _place(job, bucket)


def _open_target(path: str, sources: SourceSet, length: int, compression: str, fresh: bool) -> Any:
    import zarr

    if not fresh and os.path.exists(os.path.join(path, "zarr.json")):
        root = zarr.open_group(path, mode="r+")
        if all(a.name in root for a in sources.arrays):
            return root
    root = zarr.open_group(path, mode="w")
    for a in sources.arrays:
        root.create_array(
            a.name,
            shape=a.shape,
            chunks=(length, *a.shape[1:]),
            dtype=a.dtype,
            compressors=_compressors(compression),
            fill_value=0,
        )
    return root


def _write_attrs(root: Any, job: _Job) -> None:
    """Mark each array (and the store) with how it was written; ``shuffled`` lets the loader read once."""
    arrays = job.sources.arrays
    class_names = next((a.attrs["class_names"] for a in arrays if "class_names" in a.attrs), None)
    info = {
        "shuffled": job.options.shuffle,
        "seed": job.options.seed,
        "chunk_length": job.length,
        "sources": sorted({p.path for a in arrays for p in a.parts}),
    }
    for src, target in zip(arrays, job.targets):
        # every_chunk: chunks of fill values are written too, so a missing chunk is damage (integrity.py).
        target.attrs.update({**src.attrs, "daskfeed": {"shuffled": job.options.shuffle, "every_chunk": True}})
    root.attrs.update({"daskfeed": info, **({"class_names": class_names} if class_names else {})})


def _check_dest(dest: Any, overwrite: bool) -> str:
    if not isinstance(dest, (str, os.PathLike)) or "://" in os.fspath(dest):
        raise InputError(f"dest must be a local path (the store is renamed into place when complete), got {dest!r}")
    dest = os.fspath(dest).rstrip("/\\")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise InputError(f"dest {dest!r}: its folder {parent!r} does not exist; create it first")
    if os.path.exists(dest) and not overwrite:
        raise InputError(
            f"dest {dest!r} already exists; pass overwrite=True (--overwrite) to replace it once the new store "
            "is complete, or choose another path"
        )
    return dest


def ingest(
    sources: Any,
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
    """Write arrays from files, zarr stores or memory into one chunked, compressed zarr store.

    Every array gets the same chunk length on the sample axis (axis 0) and keeps its other axes whole, so
    chunk boundaries line up and each chunk read yields whole samples. Sources are read in ranges (``.npy``
    and stored ``.npz`` members memory-mapped, compressed members streamed, HDF5 by slices, images one file at
    a time, zarr and dask arrays in runs of their own chunks), so memory stays bounded whatever the size of the
    input. The store is built in ``DEST.daskfeed-partial`` and renamed to ``dest`` only once complete: an
    interrupted ingest never leaves a store that looks complete, and calling ``ingest`` again with the same
    arguments finishes it.

    Parameters
    ----------
    sources : path, list of paths, or dict of name to path or array
        ``.npy`` files (one array each, named after the file: ``x.npy`` -> ``"x"``), ``.npz`` files (one array
        per member), HDF5 files (every dataset, or ``file.h5:path/to/dataset``), zarr stores (every array, named
        by its path in the store) or zarr arrays (``store.zarr/x``), or one folder with a sub-folder of images per
        class (-> ``"images"`` uint8 and ``"labels"`` int64, with ``class_names`` in the attributes).
        ``NAME=PATH`` names the array; files with the same name are put end to end in the order given, and glob
        patterns (``"x=parts/x_*.npy"``) expand in sorted order. From Python, a dict names its sources, which
        may also be zarr arrays or groups, dask arrays, numpy arrays or xarray DataArrays.
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
        Memory a shuffled ingest may use to place one bucket of samples; it also bounds how many rows are read
        from a zarr or dask source at once (never fewer than one of its chunks).
    workers : int, optional
        Threads reading and writing chunks (default: one per core).
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
    >>> import shutil; shutil.rmtree(tmp)
    """
    started = time.perf_counter()
    given = locals()
    options = IngestOptions(**{f.name: given[f.name] for f in dataclasses.fields(IngestOptions)})
    dest = _check_dest(dest, options.overwrite)
    with SourceSet(sources, options.image_size, options.color_mode) as found:
        length = options.chunk_length_for(found)
        work = _WorkFolder(dest)
        fresh = work.prepare(
            {"version": _MANIFEST_VERSION, "arrays": found.fingerprint(), "options": options.decisive(length)}
        )
        journal = work.journal()
        try:
            root = _open_target(work.store, found, length, options.compression, fresh)
            workers = 1 if found.sequential else options.workers
            block = _block_chunks(found, length, options, workers or os.cpu_count() or 1)
            targets = [_every_chunk(root, a.name) for a in found.arrays]
            job = _Job(found, targets, journal, work, options, length, block, workers)
            written = (_write_shuffled if options.shuffle else _write_in_order)(job)
            _write_attrs(root, job)
            stored = sum(t.nbytes_stored() for t in job.targets)
        finally:
            journal.close()
        work.commit()
        return IngestReport(
            store=dest,
            arrays={a.name: (a.shape, str(a.dtype)) for a in found.arrays},
            samples=found.n_samples,
            chunk_length=length,
            shuffled=options.shuffle,
            seed=options.seed,
            compression=options.compression,
            chunks_written=written,
            chunks_resumed=job.n_chunks - written,
            decoded_bytes=found.n_samples * found.bytes_per_sample,
            stored_bytes=stored,
            seconds=time.perf_counter() - started,
            class_names=next((a.attrs["class_names"] for a in found.arrays if "class_names" in a.attrs), None),
        )

"""ingest: .npy / .npz / HDF5 files and folders of images -> one chunked, compressed zarr store."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.utils import format_bytes

from daskfeed._compat import run_on_zarr_loop, zarr_loop
from daskfeed.errors import DaskfeedError, DaskfeedWarning, DiskFullError, InputError, InputTypeError, warn
from daskfeed.options import parse_bytes
from daskfeed.tools.progress import Bar, progress_default
from daskfeed.tools.sources import (
    COLOR_MODES,
    IMAGE_SUFFIXES,
    SourceSet,
    _NpyPart,  # noqa: F401  (tests patch its reads)
)

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
    "stopped_message",
]

#: Decoded bytes per chunk (all arrays of a sample together) when the chunk length is not given: a 1 GiB
#: loader window then holds ~85 chunks, and per-chunk overhead stays under ~2% of the decode.
DEFAULT_CHUNK_BYTES = 4 * 2**20
#: Memory that ``shuffle=True`` may use to place one bucket of samples (it holds two copies of a bucket).
DEFAULT_INGEST_MEMORY = 1 * 2**30
COMPRESSIONS = ("zstd", "lz4", "none")
_MANIFEST_VERSION = 3

#: Test hook: ``DASKFEED_TEST_KILL_AFTER=<step>`` makes the process SIGKILL itself right after that step, as
#: ``kill -9`` or a crash would, so that tests can stop a real ingest at each instant that matters. Steps, in order:
#:
#: - ``chunk N``: in source order, chunk row N is written and journaled;
#: - ``scattered``: with shuffle, every sample is in its bucket file; ``bucket N``: bucket N is in the store
#:   and journaled (its files not yet removed);
#: - ``attrs``: every array and the store carry their attributes and the commit id; not yet complete;
#: - ``complete``: zarr's temporary files are gone and the manifest records the commit id: the store in the
#:   work folder is complete, and a rerun only renames it;
#: - ``old-moved``: the existing DEST is renamed to ``DEST.daskfeed-old`` (only when DEST existed);
#: - ``store-moved``: the new store is renamed to DEST;
#: - ``old-removing``: part of ``DEST.daskfeed-old`` is deleted (its first entry); ``old-removed``: all of it;
#: - ``partial-removing``: the work folder holds only its manifest (its last file: deleting it ends the ingest).
KILL_AFTER_ENV = "DASKFEED_TEST_KILL_AFTER"
#: What zarr's LocalStore names a chunk or metadata file while writing it (``c/0/0.<uuid4 hex>.partial``, renamed
#: when written). A write stopped by a kill, or by Ctrl-C in zarr's thread, leaves it behind.
_ZARR_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _step(name: str) -> None:
    """Mark an instant of the ingest for the test hook (see ``KILL_AFTER_ENV``)."""
    if os.environ.get(KILL_AFTER_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def partial_path(dest: str | os.PathLike) -> str:
    """Where an unfinished ingest into ``dest`` keeps its work: beside ``dest``, never looking like a store."""
    return os.fspath(dest).rstrip("/\\") + ".daskfeed-partial"


def _old_path(dest: str) -> str:
    """Where the store that ``dest`` held waits between the two renames of a commit (and until it is deleted)."""
    return dest + ".daskfeed-old"


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
    class_names : list of str, optional
        The class of each label, for a folder of images.
    kept : tuple of str
        Arrays written as they are, not along the samples: coordinates and variables of an xarray dataset along
        other dimensions (``lat``, ``lon``). They are in ``arrays`` too.
    dims : dict of str to tuple of str
        Each array's dimension names, when the sources had xarray's (then ``xarray.open_zarr`` opens the store
        with its coordinates); else empty.
    commit : str, optional
        The id of this store (a uuid4 hex), also in its attributes (``attrs["daskfeed"]["commit"]``): a store
        written again gets a new one.
    notes : tuple of str
        What this call found left by an interrupted earlier call and did about it (resumed with its drawn seed,
        finished its commit, ...).
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
    commit: str | None = None
    notes: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    dims: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

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
            dims = f" ({', '.join(self.dims[name])})" if name in self.dims else ""
            kept = ", kept as it is (not along the samples)" if name in self.kept else ""
            lines.append(f"  {name}{dims}: {shape} {dtype}{kept}")
        if self.dims:
            coords = [name for name, d in self.dims.items() if tuple(d) == (name.rpartition("/")[2],)]
            if coords:
                lines.append(f"  xarray.open_zarr opens it with its coordinates ({', '.join(coords)})")
            else:  # variables given by path: their dimensions came along, their coordinates did not
                lines.append(
                    "  xarray.open_zarr opens it with its dimension names but no coordinates: none was given (give "
                    "the whole store, or name them too, e.g. STORE/time, to keep each sample's time)"
                )
        if self.class_names is not None:
            lines.append(f"  class_names: {self.class_names}")
        return "\n".join([*self.notes, *lines])


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
    progress: bool | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.compression not in COMPRESSIONS:
            raise InputError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.color_mode not in COLOR_MODES:
            raise InputError(f"color_mode must be one of {', '.join(COLOR_MODES)}, got {self.color_mode!r}")
        for knob in ("shuffle", "overwrite", "progress"):
            if not isinstance(getattr(self, knob), bool) and not (knob == "progress" and self.progress is None):
                raise InputTypeError(f"{knob} must be True or False, got {getattr(self, knob)!r}")
        if self.progress is None:
            put("progress", progress_default())
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
        if not self.shuffle and self.seed is not None:
            raise InputError(
                f"seed={self.seed} orders a shuffle, but shuffle is False, so the samples would be written in "
                "source order and the seed ignored: pass shuffle=True as well (--shuffle), or drop the seed"
            )
        if self.shuffle and self.seed is None:
            put("seed", int(np.random.default_rng().integers(0, 2**31)))

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
        torn = False
        if os.path.exists(path):
            with open(path) as f:
                lines = f.readlines()
            self.done = {line.strip() for line in lines if line.endswith("\n")}  # a torn last line is not done
            torn = bool(lines) and not lines[-1].endswith("\n")
        # One write per line, unbuffered: a line is on disk once mark() returns (a kill cannot lose it).
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if torn:
            os.write(self._fd, b"\n")  # so that the torn line cannot run into the next step's

    def mark(self, step: str) -> None:
        with self.lock:
            line = (step + "\n").encode()
            while line:  # a short write is followed by a write that raises (ENOSPC), or by the rest
                line = line[os.write(self._fd, line) :]
            self.done.add(step)
        _step(step)

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _commit_of(store: str) -> str | None:
    """The commit id an ingest wrote into the root attributes of ``store``, or None (no store, or not ours)."""
    try:
        with open(os.path.join(store, "zarr.json")) as f:
            commit = json.load(f)["attributes"]["daskfeed"]["commit"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return commit if isinstance(commit, str) else None


def _remove_tree(path: str, step: str | None = None) -> None:
    """Delete a folder (or file) as far as possible; ``step`` marks the instant after its first entry went."""
    if os.path.isdir(path) and not os.path.islink(path):
        if step is not None:
            first = None
            with contextlib.suppress(OSError), os.scandir(path) as entries:
                first = next(entries, None)
            if first is not None:
                _remove_tree(first.path)
                _step(step)
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def _same_work(a: dict, b: dict) -> bool:
    """Whether two manifests describe the same store from the same sources (as read now): a rerun resumes."""
    return all(a.get(k) == b.get(k) for k in ("version", "arrays", "options"))


def _same_command(a: dict, b: dict, *, but_seed: bool = False) -> bool:
    """Whether two manifests come from the same command: the same options and sources, where a source inside
    DEST counts by its path only (the commit that replaced DEST changed it: ``ingest S S --shuffle``)."""
    options = [dict(m.get("options") or {}) for m in (a, b)]
    if but_seed:
        for o in options:
            o.pop("seed", None)
    return a.get("version") == b.get("version") and a.get("command") == b.get("command") and options[0] == options[1]


class _WorkFolder:
    """``DEST.daskfeed-partial``: the store being built, its manifest and journal, the buckets of a shuffle.

    The manifest says what is being built; once every chunk and attribute is written, it also records the
    commit id written into the store's attributes (step ``complete``). :meth:`commit` then renames DEST (if
    any) to ``DEST.daskfeed-old``, the new store to DEST, and deletes the old store and this folder, the
    manifest last. DEST only ever holds a complete store, the old one or the new one, and wherever the process
    stops, :meth:`recover` and :meth:`finished` tell from what is on disk how far the commit got.
    """

    def __init__(self, dest: str):
        self.dest = dest
        self.path = partial_path(dest)
        self.old = _old_path(dest)
        self.store = os.path.join(self.path, "store.zarr")
        self.buckets = os.path.join(self.path, "buckets")
        self.manifest_path = os.path.join(self.path, "manifest.json")

    def manifest(self) -> dict | None:
        try:
            with open(self.manifest_path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _write_manifest(self, manifest: dict) -> None:
        with open(self.manifest_path + ".tmp", "w") as f:
            json.dump(manifest, f)
        os.replace(self.manifest_path + ".tmp", self.manifest_path)

    def waiting(self) -> str | None:
        """The commit id of a complete new store waiting in this folder, else None."""
        commit = (self.manifest() or {}).get("commit")
        return commit if commit is not None and _commit_of(self.store) == commit else None

    def recover(self) -> list[str]:
        """Undo what an interrupted commit left half done, whatever command runs now; notes of what it did.

        DEST missing with ``DEST.daskfeed-old`` there means a commit was stopped between its renames: the new
        store goes in if it is complete and waiting here, else the old one goes back. With DEST there (always
        complete), ``DEST.daskfeed-old`` is a leftover and goes. The only complete copy is never deleted.
        """
        notes = []
        if not os.path.lexists(self.dest) and os.path.lexists(self.old):
            if self.waiting() is not None:
                os.replace(self.store, self.dest)
                notes.append(f"finished an interrupted ingest: its complete new store is now at {self.dest!r}")
            else:
                os.replace(self.old, self.dest)
                warn(
                    f"put the old store back at {self.dest!r}: an interrupted ingest had moved it to "
                    f"{self.old!r} and left no complete new store",
                    DaskfeedWarning,
                )
        if os.path.lexists(self.dest) and os.path.lexists(self.old):
            _remove_tree(self.old)
        return notes

    def finished(self) -> str | None:
        """The commit id of the store at DEST when the commit that put it there was stopped before this folder
        was deleted, else None. Checked against DEST itself, never taken from the manifest alone."""
        commit = (self.manifest() or {}).get("commit")
        if commit is not None and not os.path.lexists(self.store) and _commit_of(self.dest) == commit:
            return commit
        return None

    def prepare(self, manifest: dict, *, restart: bool = False) -> bool:
        """Make or reuse the folder; True when it starts afresh: no earlier run of the same work, or one whose
        store is gone (a journal without its store cannot be trusted)."""
        earlier = None if restart else self.manifest()
        started = os.path.exists(os.path.join(self.store, "zarr.json"))
        if earlier is not None and started and _same_work(earlier, manifest):
            commit = earlier.get("commit")  # a store recorded complete must be the one here
            if commit is None or _commit_of(self.store) == commit:
                return False
        if os.path.isdir(self.path):
            # The manifest first: stopped halfway, a folder without it is never resumed (its journal would claim
            # chunks already deleted); then all the rest, or an error.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.manifest_path)
            shutil.rmtree(self.path)
        elif os.path.lexists(self.path):
            os.remove(self.path)
        os.makedirs(self.path)
        self._write_manifest(manifest)
        return True

    def mark_complete(self, manifest: dict, commit: str) -> None:
        """Record that the store here is complete, with the commit id its attributes carry."""
        self._write_manifest({**manifest, "commit": commit})
        _step("complete")

    def journal(self) -> _Journal:
        return _Journal(os.path.join(self.path, "journal"))

    def commit(self) -> None:
        """Put the complete store at DEST; an existing DEST moves aside first and is deleted only after."""
        if os.path.lexists(self.dest):
            _remove_tree(self.old)  # a leftover (recover() removes it first): DEST is complete
            os.replace(self.dest, self.old)
            _step("old-moved")
        os.replace(self.store, self.dest)
        _step("store-moved")
        self.finish()

    def finish(self) -> None:
        """The tail of a commit, once DEST holds the new store: delete the old store, then this folder."""
        if os.path.lexists(self.old):
            _remove_tree(self.old, "old-removing")
            _step("old-removed")
        self.remove()

    def remove(self) -> None:
        """Delete this folder, its manifest last: until then a rerun can tell what the folder was."""
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in list(entries):
                if entry.name != "manifest.json":
                    _remove_tree(entry.path)
        _step("partial-removing")
        _remove_tree(self.path)


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


def _pieces(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut at the multiples of ``step``: the runs of rows a source decodes together (one zarr or
    dask chunk), so that each is decoded once and progress moves after each."""
    if step <= 1:
        return [(start, stop)]
    edges = [start, *range((start // step + 1) * step, stop, step), stop]
    return list(itertools.pairwise(edges))


def _bar(job: _Job, label: str, done_samples: int = 0) -> Bar:
    per = job.sources.bytes_per_sample
    return Bar(label, job.n * per, enabled=job.options.progress, done=done_samples * per)


def _write_in_order(job: _Job) -> int:
    todo = [i for i in range(job.n_chunks) if f"chunk {i}" not in job.journal.done]
    per = job.sources.bytes_per_sample
    bar = _bar(job, "ingest", job.n - sum(job.span(i, i + 1)[1] - job.span(i, i + 1)[0] for i in todo))

    def write(first: int, last: int) -> None:
        waiting = [i for i in range(first, last) if f"chunk {i}" not in job.journal.done]
        start, stop = job.span(waiting[0], waiting[-1] + 1)
        held: list[np.ndarray] | None = None  # rows [held_start, hi) of each array, read and not yet written
        held_start = start
        for lo, hi in _pieces(start, stop, job.sources.read_rows):
            rows = [src.read(lo, hi) for src in job.sources.arrays]
            held = rows if held is None else [np.concatenate([h, r]) for h, r in zip(held, rows)]
            while waiting and job.span(waiting[0], waiting[0] + 1)[1] <= hi:
                i = waiting.pop(0)
                c_lo, c_hi = job.span(i, i + 1)
                for data, target in zip(held, job.targets):
                    target[c_lo:c_hi] = data[c_lo - held_start : c_hi - held_start]
                job.journal.mark(f"chunk {i}")
                bar.add((c_hi - c_lo) * per)
            keep = min(job.span(waiting[0], waiting[0] + 1)[0], hi) if waiting else hi
            held, held_start = [h[keep - held_start :] for h in held], keep

    runs = [(a, b) for a, b in job.blocks() if any(f"chunk {i}" not in job.journal.done for i in range(a, b))]
    try:
        _run([functools.partial(write, a, b) for a, b in runs], job.workers)
    finally:
        bar.close()
    return len(todo)


def _scatter(job: _Job, bucket: int) -> None:
    """Pass 1 of a shuffle: each sample goes to the bucket file of where it lands in the permutation."""
    n_buckets = math.ceil(job.n / bucket)
    shutil.rmtree(job.work.buckets, ignore_errors=True)
    os.makedirs(job.work.buckets)
    locks = [threading.Lock() for _ in range(n_buckets)]
    per = job.sources.bytes_per_sample
    bar = _bar(job, "scatter")

    def scatter(first: int, last: int) -> None:
        for start, stop in _pieces(*job.span(first, last), job.sources.read_rows):
            where = permutation(np.arange(start, stop), job.n, job.options.seed)
            which = where // bucket
            order = np.argsort(which, kind="stable")
            cuts = np.searchsorted(which[order], np.arange(n_buckets + 1))
            blocks = []
            for src in job.sources.arrays:  # half a piece's credit as it is read, half once it is in its buckets
                blocks.append(src.read(start, stop)[order])
                bar.add((stop - start) * src.row_bytes // 2)
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
            bar.add((stop - start) * per - sum((stop - start) * src.row_bytes // 2 for src in job.sources.arrays))

    try:
        _run([functools.partial(scatter, a, b) for a, b in job.blocks()], job.workers)
    finally:
        bar.close()
    job.journal.mark("scattered")


#: Decoded bytes of one array written to the store at once when a bucket is placed: progress moves after each.
PLACE_SLICE_BYTES = 64 * 2**20


def _place(job: _Job, bucket: int) -> int:
    """Pass 2 of a shuffle: each bucket, a run of whole output chunks, is put in order in memory and written."""
    done = sum(
        min(job.n, (k + 1) * bucket) - k * bucket
        for k in range(math.ceil(job.n / bucket))
        if f"bucket {k}" in job.journal.done
    )
    bar = _bar(job, "place", done)
    written = 0
    try:
        for k in range(math.ceil(job.n / bucket)):
            lo, hi = k * bucket, min(job.n, (k + 1) * bucket)
            if f"bucket {k}" in job.journal.done:
                continue
            folder = job.work.buckets
            where = np.fromfile(os.path.join(folder, f"{k}.where"), np.int64) - lo
            if where.size != hi - lo:
                raise InputError(
                    f"ingest work file {folder}/{k}.where is incomplete; delete {job.work.path!r} and rerun"
                )
            for j, (src, target) in enumerate(zip(job.sources.arrays, job.targets)):
                _place_array(os.path.join(folder, f"{k}.{j}"), where, src, target, lo, job, bar)
            job.journal.mark(f"bucket {k}")
            for f in glob.glob(os.path.join(folder, f"{k}.*")):
                os.remove(f)
            written += math.ceil((hi - lo) / job.length)
    finally:
        bar.close()
    return written


def _place_array(path: str, where: np.ndarray, src: Any, target: Any, lo: int, job: _Job, bar: Bar) -> None:
    """One array of one bucket: read its file, put each row where it lands, write it to the store; each step
    in slices of whole output chunks (``lo`` is a chunk boundary), a third of the slice's credit after each."""
    n, row = where.size, src.row_bytes
    rows = np.empty((n, *src.shape[1:]), src.dtype)
    step = max(1, PLACE_SLICE_BYTES // max(row * job.length, 1)) * job.length
    spans = [(a, min(n, a + step)) for a in range(0, n, step)]

    def third(a: int, b: int) -> int:
        return (b - a) * row // 3

    with open(path, "rb") as f:
        for a, b in spans:
            if row and f.readinto(rows[a:b].reshape(-1).view(np.uint8)) != (b - a) * row:
                raise InputError(f"ingest work file {path} is incomplete; delete {job.work.path!r} and rerun")
            bar.add(third(a, b))
    placed = np.empty_like(rows)
    for a, b in spans:
        placed[where[a:b]] = rows[a:b]
        bar.add(third(a, b))
    del rows
    for a, b in spans:
        target[lo + a : lo + b] = placed[a:b]
        bar.add((b - a) * row - 2 * third(a, b))


def _write_shuffled(job: _Job) -> int:
    """Two passes: scatter samples into buckets on disk by where they land, then place each bucket in memory."""
    per_sample = job.sources.bytes_per_sample + 8
    # A bucket is a run of whole output chunks; placing it holds its samples twice (as read, and in order).
    bucket = max(job.length, (job.options.memory // (2 * per_sample)) // job.length * job.length)
    if "scattered" not in job.journal.done:
        _scatter(job, bucket)
    return _place(job, bucket)


def _write_kept(job: _Job, root: Any) -> None:
    """Write the arrays kept as they are (coordinates along other dimensions: ``lat``, ``lon``), in order."""
    for src in job.sources.kept:
        step = f"kept {src.name}"
        if step in job.journal.done:
            continue
        target = _every_chunk(root, src.name)
        if not src.shape:
            target[...] = src.read(0, 0)
        else:
            rows = max(1, PLACE_SLICE_BYTES // max(src.row_bytes, 1))
            for a in range(0, src.shape[0], rows):
                b = min(src.shape[0], a + rows)
                target[a:b] = src.read(a, b)
        job.journal.mark(step)


def _consolidate(path: str) -> None:
    """Write zarr's consolidated metadata, which ``xarray.open_zarr`` looks for first (without it xarray warns
    that the store is slower to open). zarr 3 warns that this is not yet in its format's specification."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(path)


def _open_existing(path: str, sources: SourceSet) -> Any:
    """The store an interrupted run was writing, or None when it cannot be resumed (gone, or not all arrays)."""
    import zarr

    try:
        root = zarr.open_group(path, mode="r+")
        return root if all(a.name in root for a in sources.every) else None
    except Exception:  # zarr raises several kinds for a store it cannot read; then start afresh
        return None


def _create_target(path: str, sources: SourceSet, length: int, compression: str) -> Any:
    import zarr

    root = zarr.open_group(path, mode="w")
    named = sources.sample_dim is not None  # xarray's dimension names on every array
    for a in sources.every:
        if a.kept:  # written as it is: chunks of ~4 MiB along its first axis, if it has one
            rows = max(1, min(a.shape[0], DEFAULT_CHUNK_BYTES // max(a.row_bytes, 1))) if a.shape else 0
            chunks = (rows, *a.shape[1:]) if a.shape else ()
        else:
            chunks = (length, *a.shape[1:])
        root.create_array(
            a.name,
            shape=a.shape,
            chunks=chunks,
            dtype=a.dtype,
            compressors=_compressors(compression),
            fill_value=0,
            dimension_names=a.dims if named else None,
        )
    return root


def _remove_zarr_temporaries(store: str) -> int:
    """Delete the temporary files that zarr's interrupted writes left in ``store``; how many there were."""
    removed = 0
    for folder, _dirs, files in os.walk(store):
        for name in files:
            if _ZARR_TEMPORARY.search(name):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def _write_attrs(root: Any, job: _Job, commit: str) -> None:
    """Mark each array (and the store) with how it was written; ``shuffled`` lets the loader read once, and
    ``commit`` (new for every store written) lets it notice a store replaced under it."""
    arrays = job.sources.arrays
    class_names = next((a.attrs["class_names"] for a in job.sources.every if "class_names" in a.attrs), None)
    info = {
        "shuffled": job.options.shuffle,
        "seed": job.options.seed,
        "chunk_length": job.length,
        "sources": sorted({p.path for a in job.sources.every for p in a.parts}),
        "commit": commit,
    }
    if job.sources.sample_dim is not None:
        info["sample_dim"] = job.sources.sample_dim
    for src, target in zip(arrays, job.targets):
        # every_chunk: chunks of fill values are written too, so a missing chunk is damage (integrity.py).
        mark = {"shuffled": job.options.shuffle, "every_chunk": True, "commit": commit}
        target.attrs.update({**src.attrs, "daskfeed": mark})
    for src in job.sources.kept:  # in the order of their source, whatever the samples' order
        mark = {"shuffled": False, "kept": True, "every_chunk": True, "commit": commit}
        root[src.name].attrs.update({**src.attrs, "daskfeed": mark})
    # The root last: its commit id says that every array's attributes are written (see _WorkFolder.waiting).
    extra = {"class_names": class_names} if class_names else {}
    root.attrs.update({**job.sources.attrs, "daskfeed": info, **extra})
    _step("attrs")


def _check_dest(dest: Any) -> str:
    if not isinstance(dest, (str, os.PathLike)) or "://" in os.fspath(dest):
        raise InputError(f"dest must be a local path (the store is renamed into place when complete), got {dest!r}")
    dest = os.fspath(dest).rstrip("/\\")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise InputError(f"dest {dest!r}: its folder {parent!r} does not exist; create it first")
    return dest


def _refuse_existing(dest: str, overwrite: bool) -> None:
    if os.path.lexists(dest) and not overwrite:
        raise InputError(
            f"dest {dest!r} already exists; pass overwrite=True (--overwrite) to replace it once the new store "
            "is complete, or choose another path"
        )


# -- a full disk ----------------------------------------------------------------------------------------------


def _free_bytes(path: str) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def _tree_bytes(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _disk_full_errno(err: BaseException, folder: str) -> int | None:
    """ENOSPC or EDQUOT when ``err`` (or what caused it) says the disk is full, else None.

    numpy's ``tofile`` reports a short write as ``OSError("N requested and M written")`` without an errno: that
    counts when the disk holding ``folder`` has less than N bytes free.
    """
    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            if err.errno in full:
                return err.errno
            short = re.search(r"(\d+) requested and (\d+) written", str(err))
            if err.errno is None and short and 0 <= _free_bytes(folder) < int(short.group(1)):
                return errno.ENOSPC
        err = err.__cause__ or err.__context__
    return None


def _disk_full(work: _WorkFolder, sources: SourceSet, options: IngestOptions, code: int) -> DiskFullError:
    decoded = sources.n_samples * sources.bytes_per_sample
    buckets = decoded + 8 * sources.n_samples if options.shuffle else 0
    free, kept = _free_bytes(work.path), _tree_bytes(work.path)
    parts = f"up to {format_bytes(decoded)} for the store"
    if buckets:
        parts = f"{format_bytes(buckets)} for the shuffle's buckets and {parts}"
    old = (
        f"; the old store at {work.dest!r} stays until the new one is complete, so both must fit"
        if os.path.lexists(work.dest)
        else ""
    )
    message = (
        f"the disk holding {work.path!r} is full ({format_bytes(max(free, 0))} free): this ingest needs up to "
        f"about {format_bytes(decoded + buckets)} there, {parts} (estimated from the decoded size of the data, "
        f"{format_bytes(decoded)}; compression usually makes the store smaller){old}. The part done so far "
        f"({format_bytes(kept)}) is kept in {work.path!r}: free some space and run the same command again to "
        "finish it, or delete that folder."
    )
    return DiskFullError(message, folder=work.path, needed=decoded + buckets, free=free, errno=code)


def _settle_zarr(timeout: float = 30.0) -> None:
    """Let the writes that zarr still has in flight end, before an error is raised.

    A zarr write gathers one task per chunk on zarr's event-loop thread and returns at the first failure,
    leaving the others pending; if the process then exits, asyncio prints "Task was destroyed but it is
    pending!" for each (zarr 3.1, seen on a full disk). Best effort: a zarr without this loop is left alone.
    """
    import asyncio

    loop = zarr_loop()
    if loop is None or loop.is_closed():
        return

    async def settle() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if not others:
                return
            await asyncio.wait(others, timeout=deadline - time.monotonic())

    with contextlib.suppress(Exception):
        run_on_zarr_loop(settle())


def stopped_message(dest: str | os.PathLike, why: str | None) -> str | None:
    """What an ingest into ``dest`` stopped by ``why`` (Ctrl-C, an error) left, and what to do; None if nothing."""
    work = _WorkFolder(os.fspath(dest).rstrip("/\\"))
    dest, why = work.dest, why or "stopped"
    if work.finished() is not None:
        left = ", ".join(repr(p) for p in (work.old, work.path) if os.path.lexists(p))
        return (
            f"daskfeed: {why}: {dest!r} is complete (this run wrote it); the next ingest into it deletes what is "
            f"left beside it ({left}), or delete that yourself."
        )
    if not os.path.lexists(dest) and os.path.lexists(work.old):
        return (
            f"daskfeed: {why} while replacing {dest!r}: the old store is in {work.old!r} and the complete new "
            f"one in {work.path!r}. Run the same command again to finish (any ingest into {dest!r} first puts "
            "the new store in place)."
        )
    if work.waiting() is not None:
        return (
            f"daskfeed: {why}: the new store is complete in {work.path!r} but not yet at {dest!r}. Run the same "
            "command again to put it in place."
        )
    if os.path.exists(work.path):
        manifest = work.manifest() or {}
        seed = (manifest.get("options") or {}).get("seed")
        drawn = f" (it goes on with the seed it drew, {seed})" if manifest.get("seed_drawn") else ""
        kept = " The old store there is untouched." if os.path.lexists(dest) else ""
        return (
            f"daskfeed: {why}: {dest!r} was not written; the part done so far is kept in {work.path!r}. "
            f"Run the same command again to finish it{drawn}, or delete that folder.{kept}"
        )
    return None


def ingest(
    sources: Any,
    dest: str | os.PathLike,
    *,
    chunk_length: int | None = None,
    chunk_bytes: int | float | str = DEFAULT_CHUNK_BYTES,
    compression: str = "zstd",
    shuffle: bool = False,
    seed: int | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "rgb",
    memory: int | float | str = DEFAULT_INGEST_MEMORY,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> IngestReport:
    """Write arrays from files, zarr stores or memory into one chunked, compressed zarr store.

    Every array gets the same chunk length on the sample axis (axis 0) and keeps its other axes whole, so
    chunk boundaries line up and each chunk read yields whole samples. Sources are read in ranges (``.npy``
    and stored ``.npz`` members memory-mapped, compressed members streamed, HDF5 by slices, images one file at
    a time, zarr and dask arrays in runs of their own chunks), so memory stays bounded whatever the size of the
    input. The store is built in ``DEST.daskfeed-partial`` and renamed to ``dest`` only once complete. Wherever
    an ingest stops (Ctrl-C, a kill, a crash, a full disk), ``dest`` holds a complete store, the old one or the
    new one, and calling ``ingest`` again with the same arguments finishes the work (from where it stopped,
    with the seed it drew) and removes what it left beside ``dest``.

    Parameters
    ----------
    sources : path, list of paths, or dict of name to path or array
        ``.npy`` files (one array each, named after the file: ``x.npy`` -> ``"x"``), ``.npz`` files (one array
        per member), HDF5 files (every dataset, or ``file.h5:path/to/dataset``), zarr stores (every array, named
        by its path in the store) or zarr arrays (``store.zarr/x``), or one folder with a sub-folder of images per
        class (-> ``"images"`` uint8 and ``"labels"`` int64, with ``class_names`` in the attributes).
        ``NAME=PATH`` names the array; files with the same name are put end to end in the order given, and glob
        patterns (``"x=parts/x_*.npy"``) expand in sorted order. From Python, a dict names its sources, which
        may also be zarr arrays or groups, dask arrays, numpy arrays or xarray DataArrays; an ``xarray.Dataset``
        (alone, in a list, or as a dict value that prefixes its names) gives its data variables and coordinates.

        An ``xarray.Dataset``, or a store ``Dataset.to_zarr`` wrote, is written along its **sample dimension**:
        the first dimension of the data variables that hold the most bytes (``time`` for ``(time, lat,
        lon)``). Its data variables and coordinates along it (``time``) are rechunked and, with ``shuffle``,
        shuffled together, so each sample keeps its coordinates; coordinates and variables along other
        dimensions (``lat``, ``lon``) are written as they are. Every array keeps its attributes and dimension
        names, and the store gets consolidated metadata, so ``xarray.open_zarr(dest)`` opens it with its
        coordinates.
    dest : path
        The zarr store to write; a local directory.
    chunk_length : int, optional
        Samples per chunk. By default, as many as fit ``chunk_bytes`` decoded (all arrays of a sample together).
    chunk_bytes : int, float or str, default 4 MiB
        Target decoded size of one chunk row when ``chunk_length`` is not given.
    compression : {"zstd", "lz4", "none"}, default "zstd"
        Blosc with zstd (level 3) or lz4 (level 5), both with byte shuffle; or no compression.
    shuffle : bool, default False
        Write the samples in a seeded random permutation (the same one for every array). Later epochs then mix
        well at ``reads_per_chunk=1``. Done out of core in two passes: samples are scattered into buckets on disk
        beside ``dest`` (needs free disk for one decoded copy), then each bucket is placed in ``memory``.
    seed : int, optional
        Seed of the permutation; drawn at random (and reported) when not given. An interrupted ingest called
        again without a seed goes on with the one it drew.
    image_size : (height, width), optional
        Resize every image to this size. Without it all images must have the size of the first.
    color_mode : {"rgb", "grayscale", "rgba"}, default "rgb"
        Channels images are converted to, as in Keras.
    memory : int, float or str, default 1 GiB
        Memory a shuffled ingest may use to place one bucket of samples; it also bounds how many rows are read
        from a zarr or dask source at once (never fewer than one of its chunks).
    workers : int, optional
        Threads reading and writing chunks (default: one per core).
    overwrite : bool, default False
        Replace an existing ``dest`` once the new store is complete (the new store gets a new ``commit`` id in
        its attributes). Without it an existing ``dest`` is an error.
    progress : bool, optional
        Show a progress bar (tqdm) on standard error for each phase. By default on when standard error is a
        terminal or a Jupyter notebook shows it, off in logs and pipes; ``daskfeed ingest`` shows it unless
        ``--quiet``.

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        A source is missing or unreadable, arrays disagree on their length, the files of one array on their
        shape or dtype, ``dest`` exists without ``overwrite``, ``seed`` is given without ``shuffle``, or a knob
        is out of range.
    DiskFullError
        The disk filled up (also an ``OSError`` with ``errno`` ``ENOSPC``); the message says how much space the
        ingest needs. The work done so far is kept: free space and call ``ingest`` again to finish.

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
    drawn = options.shuffle and seed is None
    dest = _check_dest(dest)
    work = _WorkFolder(dest)
    # Before the sources are opened: DEST may be one of them, and an interrupted commit may have moved it.
    notes = work.recover()
    finished = work.finished()
    if finished is None:
        _refuse_existing(dest, options.overwrite)
    with SourceSet(sources, options.image_size, options.color_mode) as found:
        length = options.chunk_length_for(found)
        manifest = _manifest(found, options, length, drawn, dest)
        earlier = work.manifest()
        if drawn and earlier and earlier.get("seed_drawn") and _same_command(earlier, manifest, but_seed=True):
            # The same command, interrupted: it goes on with the seed it drew, not a new one.
            options = dataclasses.replace(options, seed=earlier["options"]["seed"])
            manifest = _manifest(found, options, length, drawn, dest)
            notes.append(f"resuming the interrupted ingest with its drawn seed {options.seed}")
            if options.progress:
                print(f"daskfeed: {notes[-1]}", file=sys.stderr, flush=True)
        report = functools.partial(_report, dest, found, options, length, started)
        if finished is not None:
            # A commit was stopped after DEST got its new store: only the old store and the work folder were left.
            same = earlier is not None and _same_command(earlier, manifest)
            work.finish()
            earlier = None
            if same:
                return report(0, finished, (*notes, f"{dest!r} was complete already; removed what was left"))
            _refuse_existing(dest, options.overwrite)
        try:
            written, commit, fresh = _build(work, found, options, length, manifest)
            if fresh and earlier is not None and _same_work(earlier, manifest):
                notes.append("the store of the interrupted ingest was gone or unreadable: it started afresh")
            work.commit()
        except OSError as err:
            code = None if isinstance(err, DaskfeedError) else _disk_full_errno(err, work.path)
            _settle_zarr()
            if code is None:
                raise
            raise _disk_full(work, found, options, code) from err
        return report(written, commit, tuple(notes))


def _manifest(sources: SourceSet, options: IngestOptions, length: int, drawn: bool, dest: str) -> dict:
    """What a work folder builds: a rerun resumes only the same work (sources as read now, options)."""
    inside = os.path.abspath(dest) + os.sep

    def identity(part: Any) -> list:
        local = "://" not in part.path and not part.path.startswith("<")
        if local and (os.path.abspath(part.path) + os.sep).startswith(inside):
            return [os.path.abspath(part.path), list(part.shape), str(part.dtype)]
        return part.fingerprint()

    manifest = {
        "version": _MANIFEST_VERSION,
        "arrays": sources.fingerprint(),
        "options": options.decisive(length),
        "command": {a.name: [identity(p) for p in a.parts] for a in sources.every},
        "seed_drawn": drawn,
    }
    return json.loads(json.dumps(manifest))  # as read back from the file: tuples become lists


def _build(
    work: _WorkFolder, found: SourceSet, options: IngestOptions, length: int, manifest: dict
) -> tuple[int, str, bool]:
    """Write the store in the work folder, or go on with an interrupted run's, until it is complete and the
    manifest says so; ``(chunk rows written, commit id, whether it started afresh)``."""
    fresh = work.prepare(manifest)
    root = None if fresh else _open_existing(work.store, found)
    if root is None and not fresh:
        fresh = work.prepare(manifest, restart=True)
    if root is None:
        root = _create_target(work.store, found, length, options.compression)
    commit = None if fresh else (work.manifest() or {}).get("commit")
    if commit is not None:  # complete already: only the renames were left
        return 0, commit, fresh
    journal = work.journal()
    try:
        found.hold_small(options.memory)
        workers = 1 if found.sequential else options.workers
        block = _block_chunks(found, length, options, workers or os.cpu_count() or 1)
        targets = [_every_chunk(root, a.name) for a in found.arrays]
        job = _Job(found, targets, journal, work, options, length, block, workers)
        _write_kept(job, root)
        written = (_write_shuffled if options.shuffle else _write_in_order)(job)
        commit = uuid.uuid4().hex
        _write_attrs(root, job, commit)
        if found.sample_dim is not None:
            _consolidate(work.store)
    finally:
        journal.close()
    _remove_zarr_temporaries(work.store)
    work.mark_complete(manifest, commit)
    return written, commit, fresh


def _report(
    dest: str,
    found: SourceSet,
    options: IngestOptions,
    length: int,
    started: float,
    written: int,
    commit: str | None,
    notes: tuple[str, ...],
) -> IngestReport:
    return IngestReport(
        store=dest,
        arrays={a.name: (a.shape, str(a.dtype)) for a in found.every},
        samples=found.n_samples,
        chunk_length=length,
        shuffled=options.shuffle,
        seed=options.seed,
        compression=options.compression,
        chunks_written=written,
        chunks_resumed=math.ceil(found.n_samples / length) - written,
        decoded_bytes=found.n_samples * found.bytes_per_sample,
        stored_bytes=sum(_tree_bytes(os.path.join(dest, a.name)) for a in found.every),  # 3x zarr's listing
        seconds=time.perf_counter() - started,
        class_names=next((a.attrs["class_names"] for a in found.every if "class_names" in a.attrs), None),
        commit=commit,
        notes=notes,
        kept=tuple(a.name for a in found.kept),
        dims={a.name: a.dims for a in found.every} if found.sample_dim is not None else {},
    )

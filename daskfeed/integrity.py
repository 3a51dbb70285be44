"""Store integrity: chunk files a zarr array lacks (and whether that looks like damage), and stores replaced
under a loader.

zarr serves a chunk that is not in the store as the array's fill value. By default zarr 3 does not write a chunk
that is all fill value, so a missing chunk can be on purpose (empty masks, padding); but a store copied halfway
(an interrupted ``cp``, ``rsync`` or upload) looks the same, and training on it would silently learn zeros.
daskfeed lists the store once (one listing, no chunk is read) and compares it with the chunk grid.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daskfeed._compat import chunk_key_encoder, run_on_zarr_loop
from daskfeed.errors import DaskfeedWarning, StoreError, warn
from daskfeed.inputs import row_bytes, store_location, store_read_timeout

__all__ = ["MissingChunks", "StoreWatch", "check_missing", "damage", "find_missing", "written_by_daskfeed"]

#: Protocols whose stores cannot be listed: there a missing chunk cannot be told from a fill-value one.
_UNLISTABLE = ("http", "https")
#: Chunks named in a message, at most.
_SHOWN = 8


@dataclass(frozen=True)
class MissingChunks:
    """The chunks of one zarr array that are not in its store."""

    array: str  # the name in messages
    grid: tuple[int, ...]  # chunks (shards, for a sharded array) along each axis
    length: int  # samples per chunk along the first axis
    n_samples: int
    missing: tuple[tuple[int, ...], ...]  # grid coordinates of the chunks not stored

    @property
    def samples(self) -> list[tuple[int, int]]:
        """The sample ranges (start, stop) that hold fill values in place of missing chunks, merged."""
        rows = sorted({c[0] for c in self.missing})
        spans: list[tuple[int, int]] = []
        for r in rows:
            lo, hi = r * self.length, min(self.n_samples, (r + 1) * self.length)
            if spans and spans[-1][1] == lo:
                spans[-1] = (spans[-1][0], hi)
            else:
                spans.append((lo, hi))
        return spans

    def describe(self) -> str:
        shown = ", ".join(str(c) for c in self.missing[:_SHOWN])
        more = f" and {len(self.missing) - _SHOWN} more" if len(self.missing) > _SHOWN else ""
        spans = self.samples
        where = ", ".join(f"{lo}-{hi - 1}" for lo, hi in spans[:_SHOWN]) + (" ..." if len(spans) > _SHOWN else "")
        return (
            f"{self.array}: {len(self.missing)} of {math.prod(self.grid)} chunks missing ({shown}{more}), "
            f"samples {where}"
        )


def _listable(z: Any) -> bool:
    store = z.store_path.store
    if not getattr(store, "supports_listing", False):
        return False
    protocol = getattr(getattr(store, "fs", None), "protocol", None)
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())
    return not any(p in _UNLISTABLE for p in protocols)


def _walk(store: Any, prefix: str) -> set[str] | None:
    """The keys under ``prefix`` of a plain local store, by walking its directory with ``os.scandir`` (about 5x
    faster than the store's own listing, which the loader waits for before its first batch); None for other
    stores."""
    from zarr.storage import LocalStore

    if type(store) is not LocalStore:
        return None
    keys: set[str] = set()

    def visit(directory: str, base: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not entry.is_dir():
                keys.add(base + entry.name)
            elif not entry.is_symlink():  # as os.walk: a link to a directory is not walked into
                visit(entry.path, f"{base}{entry.name}/")

    visit(os.path.join(str(store.root), prefix), "")
    return keys


def find_missing(z: Any, name: str) -> MissingChunks | None:
    """The chunks zarr array ``z`` lacks in its store (for a sharded array, whole shards), or None when its
    store cannot be listed (HTTP)."""

    if not _listable(z):
        return None
    step = z.shards or z.chunks
    grid = tuple(math.ceil(s / c) for s, c in zip(z.shape, step))
    prefix = z.store_path.path.rstrip("/")

    async def listing() -> set[str]:
        start = f"{prefix}/" if prefix else ""
        return {key[len(start) :] async for key in z.store_path.store.list_prefix(start)}

    stored = _walk(z.store_path.store, prefix)
    if stored is None:  # a remote store: listing waits on the network, so read_timeout bounds it too
        seconds = store_read_timeout(z.store_path.store)[0]
        try:
            stored = run_on_zarr_loop(asyncio.wait_for(listing(), seconds))
        except TimeoutError:
            raise TimeoutError(
                f"listing the store took longer than read_timeout={seconds:g} s (set it with "
                "daskfeed.open_zarr(..., read_timeout=))"
            ) from None
    coords = itertools.product(*(range(g) for g in grid))
    key = chunk_key_encoder(z.metadata)
    missing = tuple(c for c in coords if key(c) not in stored)
    return MissingChunks(name, grid, int(step[0]), int(z.shape[0]), missing)


def written_by_daskfeed(z: Any) -> bool:
    """Whether ``daskfeed ingest`` wrote zarr array ``z`` with every chunk (marked ``every_chunk``), so that
    none may be missing. Stores it wrote before left all-zero chunks out, as zarr does, and carry no mark."""
    mark = z.attrs.get("daskfeed")
    return isinstance(mark, Mapping) and mark.get("every_chunk") is True


def damage(found: Sequence[MissingChunks]) -> list[str]:
    """Sample ranges missing in one array where another array has its data: an array copied halfway."""
    notes = []
    for report in found:
        for lo, hi in report.samples:
            whole = [
                other.array
                for other in found
                if other is not report and not any(a < hi and lo < b for a, b in other.samples)
            ]
            if whole:
                notes.append(f"samples {lo}-{hi - 1} are missing in {report.array} but present in {', '.join(whole)}")
    return notes


def _tail(report: MissingChunks, z: Any) -> bool:
    """Whether the last chunk in the order a copy goes is missing: the keys' sorted order (``cp``'s, ``rsync``'s,
    an upload's) or the chunk grid's (a writer that went in order)."""
    coords = list(itertools.product(*(range(g) for g in report.grid)))
    last_key = max(coords, key=chunk_key_encoder(z.metadata))
    return coords[-1] in report.missing or last_key in report.missing


def suspect(found: Sequence[MissingChunks], arrays: Mapping[str, Any]) -> list[str]:
    """The arrays whose missing chunks look like a store copied or written halfway, not like chunks zarr left out
    for holding only the fill value.

    zarr leaves out every chunk that is all fill value, so only the pattern can tell: chunks missing from the
    array with the most bytes per sample (images, the features: an all-zero chunk of those is rare), or the last
    chunk in the order a copy or a writer goes, in any array. Chunks missing elsewhere in a lighter array (a
    label chunk of class 0 in a store sorted by label) are what zarr does by default, and are not suspect.
    """

    heaviest = max(row_bytes(z) for z in arrays.values())
    return [r.array for r in found if row_bytes(arrays[r.array]) == heaviest or _tail(r, arrays[r.array])]


def verify_hint(arrays: Sequence[Any]) -> str:
    roots = {store_location(z) for z in arrays}
    root = roots.pop() if len(roots) == 1 else None
    return f"`daskfeed info --verify {root or 'STORE'}` lists every missing chunk."


def check_missing(arrays: Sequence[tuple[str, Any]], mode: str) -> list[MissingChunks]:
    """Apply ``missing_chunks=mode`` to named zarr arrays: nothing for ``"fill"``; else list their stores, and
    warn (``"warn"``, only when the pattern is :func:`suspect`) or raise :class:`StoreError` (``"error"``, and
    always for arrays ``daskfeed ingest`` wrote) naming the missing chunks and samples. Returns what was found."""
    if mode == "fill" or not arrays:
        return []
    reports, unlisted = [], []
    for name, z in arrays:
        try:
            report = find_missing(z, name)
        except Exception as err:  # a store that refuses listing (say, S3 credentials without ListBucket)
            if mode == "error":
                raise StoreError(
                    f"missing_chunks='error' cannot be checked for {name}: listing its store failed "
                    f"({type(err).__name__}: {err}); pass missing_chunks='warn' or 'fill'"
                ) from err
            reason = f"{type(err).__name__}: {err}"
            warn(f"cannot check {name} for missing chunks: listing its store failed ({reason})", DaskfeedWarning)
            continue
        if report is None:
            unlisted.append(name)
        else:
            reports.append(report)
    if unlisted and mode == "error":
        raise StoreError(
            f"missing_chunks='error' cannot be checked for {', '.join(unlisted)}: an HTTP store cannot be listed, "
            "so a missing chunk cannot be told from one left out for holding only fill values; pass "
            "missing_chunks='warn' or 'fill'"
        )
    found = [r for r in reports if r.missing]
    if not found:
        return found
    message = (
        f"chunks missing from the store: {'; '.join([r.describe() for r in found] + damage(reports))}. zarr serves "
        "a missing chunk as the fill value: a store copied or written halfway looks like this, and zarr also "
        "leaves out chunks that hold only the fill value. "
    )
    hint = verify_hint([z for _, z in arrays])
    by_daskfeed = [name for name, z in arrays if written_by_daskfeed(z) and any(r.array == name for r in found)]
    if mode == "warn" and not by_daskfeed and not suspect(found, dict(arrays)):
        return found  # what zarr leaves out on purpose (labels of the fill value's class): nothing to say
    if mode == "error" or by_daskfeed:
        why = f"{', '.join(by_daskfeed)} written by daskfeed ingest, which writes every chunk" if by_daskfeed else ""
        raise StoreError(
            message + f"Refusing to serve fill values in their place ({why or 'missing_chunks=error'}): copy the "
            f"store again, or pass missing_chunks='fill' if they are meant to be empty. {hint}"
        )
    warn(
        message + f"{hint} Pass missing_chunks='fill' if they are meant to be empty, 'error' to refuse.",
        DaskfeedWarning,
    )
    return found


def _commit(attrs: Mapping) -> str | None:
    """The commit id ``daskfeed ingest`` writes into every array it stores, or None."""
    mark = attrs.get("daskfeed")
    commit = mark.get("commit") if isinstance(mark, Mapping) else None
    return commit if isinstance(commit, str) else None


class _Watched:
    """One zarr array's identity: what changes when its store is replaced (an ingest's commit renames a new
    store into place) or the array is written again."""

    def __init__(self, name: str, z: Any):
        from zarr.storage import LocalStore

        self.name, self.array = name, z
        self.location = store_location(z) or str(z.store_path)
        store = z.store_path.store
        self.root = os.fspath(store.root) if type(store) is LocalStore else None
        self.commit = _commit(z.attrs)  # as the array was opened

    def local_identity(self) -> tuple:
        """The store's root folder, the array's folder and its metadata file: device, inode (and the file's
        modification time). Renaming a store into place changes the first; writing the array again the last."""
        path = self.array.path
        folder = os.path.join(self.root, path) if path else self.root
        meta = "zarr.json" if self.array.metadata.zarr_format == 3 else ".zarray"
        out = []
        for where in (self.root, folder, os.path.join(folder, meta)):
            try:
                st = os.stat(where)
            except OSError:  # gone: between the two renames of a commit, or deleted
                out.append(None)
                continue
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns if where.endswith(meta) else 0))
        return tuple(out)

    def current_commit(self) -> str | None:
        import zarr

        z = self.array
        try:
            return _commit(zarr.open_array(store=z.store_path.store, path=z.path, mode="r").attrs)
        except Exception:  # gone, or half written: not the store the loader was made on
            return None


class StoreWatch:
    """Makes sure a loader never serves data from two versions of a store.

    Taken when the loader is made; :meth:`check` runs after each window is read (and after the data held in
    memory is read), so every batch's rows come from the store as it was when the loader was made: a local
    store by the identity of its folders and of each array's metadata file (a few ``stat`` calls); any store
    ``daskfeed ingest`` wrote also by the commit id in its attributes (on remote stores, one metadata read per
    window). Arrays that are not plain zarr arrays (dask work on top) are not watched.
    """

    def __init__(self, arrays: Sequence[tuple[str, Any]]):
        self._watched = [_Watched(name, z) for name, z in arrays]
        self._local = {w.name: w.local_identity() for w in self._watched if w.root is not None}
        for w in self._watched:  # replaced between open_zarr and now: the array's metadata is the old store's
            if w.commit is not None and w.current_commit() != w.commit:
                raise self._changed(w)

    def check(self) -> None:
        """Raise :class:`StoreError` if a store the loader reads was replaced or an array written since."""
        for w in self._watched:
            if w.root is not None:
                if w.local_identity() != self._local[w.name]:
                    raise self._changed(w)
            elif w.commit is not None and w.current_commit() != w.commit:
                raise self._changed(w)

    @staticmethod
    def _changed(w: _Watched) -> StoreError:
        return StoreError(
            f"the store {w.location} changed while this loader was reading it: array {w.name} was replaced (a "
            "`daskfeed ingest --overwrite` into it, or the array written again). Batches would pair samples of two "
            "versions of the store, so none is served; make a new loader to read the store as it is now."
        )

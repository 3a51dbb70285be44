"""info: what a zarr store holds, and what in its layout will make training slow or badly mixed."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.utils import format_bytes

from daskfeed.inputs import (
    TENSOR_KINDS,
    DatasetRoles,
    chunk_bounds,
    open_zarr_node,
    rewrite_command,
    row_bytes,
    store_roles,
    written_shuffled,
)
from daskfeed.integrity import damage, find_missing
from daskfeed.layout import WARN_AMPLIFICATION, ArraySpec, Layout, choose_layout, decode_limit
from daskfeed.mixing import LABEL_WHOLE_BYTES, label_grouping, looks_like_labels, read_cost, sampled_units
from daskfeed.options import DEFAULT_MEMORY_BUDGET, LoaderOptions, parse_bytes
from daskfeed.read import DEFAULT_CONCURRENCY, usable_cores

__all__ = ["ArrayInfo", "StoreInfo", "info"]

#: Below this many decoded bytes a chunk costs more in per-read overhead than in decoding.
SMALL_CHUNK_BYTES = 256 * 2**10
#: Labels grouped more than this (:func:`daskfeed.mixing.grouping`) look sorted: info warns. Between
#: :data:`daskfeed.mixing.MIXED_GROUPING` and it, labels are neither mixed enough for one read per chunk nor
#: worth a warning of their own.
SORTED_DISTANCE = 0.3


@dataclass(frozen=True)
class ArrayInfo:
    """One array of a store."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    decoded_bytes: int
    stored_bytes: int
    compressors: str
    #: xarray's dimension names, for a store xarray wrote; else None.
    dims: tuple[str, ...] | None = None
    #: ``"variable"`` or ``"coordinate"`` in a store xarray wrote; ``"array"`` in others.
    role: str = "array"

    @property
    def ratio(self) -> float:
        """Compression ratio: decoded bytes per stored byte."""
        return self.decoded_bytes / max(self.stored_bytes, 1)


@dataclass(frozen=True)
class StoreInfo:
    """What :func:`info` found: the arrays, the store's attributes, and warnings with what to do about them."""

    store: str
    arrays: list[ArrayInfo]
    attrs: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    label_grouping: dict[str, float] = field(default_factory=dict)
    #: How a loader with the given batch size and budget reads the store (:meth:`daskfeed.Layout.describe`).
    loader: str = ""
    #: What that costs, from one chunk read here: the first batch's wait and an epoch's decoding.
    estimate: str = ""
    #: With ``verify``: each array's chunks missing from the store (grid coordinates), or None when the store
    #: cannot be listed (HTTP). Empty without ``verify``.
    missing: dict[str, list[tuple[int, ...]] | None] = field(default_factory=dict)
    #: For a store xarray wrote: ``sample_dim``, the ``variables`` along it (a loader's inputs), the ``coords``
    #: along it (carried with their samples by ingest), and the arrays ``kept`` as they are (other dimensions).
    dataset: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"store {self.store}"]
        if self.dataset:  # variables and coordinates apart, each with its dimensions
            lines += _table("variable", [a for a in self.arrays if a.role != "coordinate"], dims=True)
            lines += _table("coordinate", [a for a in self.arrays if a.role == "coordinate"], dims=True)
        else:
            lines += _table("array", self.arrays)
        if self.dataset:
            lines.append(self.dataset["summary"])
        ingest = self.attrs.get("daskfeed")
        if isinstance(ingest, dict):
            order = f"shuffled (seed {ingest.get('seed')})" if ingest.get("shuffled") else "in source order"
            lines.append(f"written by daskfeed ingest, {order}")
        if "class_names" in self.attrs:
            lines.append(f"class_names: {self.attrs['class_names']}")
        for name, distance in self.label_grouping.items():
            lines.append(
                f"labels {name!r}: grouping {distance:.2f} (0 = chunks mix classes as a random order does, "
                "1 = each chunk holds one class)"
            )
        if self.loader:
            lines.append(f"loader: {self.loader}")
        if self.estimate:
            lines.append(f"  {self.estimate}")
        if self.missing:
            lacking = {name: chunks for name, chunks in self.missing.items() if chunks}
            unlisted = [name for name, chunks in self.missing.items() if chunks is None]
            if unlisted:
                lines.append(f"missing chunks: cannot tell for {', '.join(unlisted)} (an HTTP store cannot be listed)")
            if not lacking and len(unlisted) < len(self.missing):
                lines.append("missing chunks: none, every chunk of every array is in the store")
        lines += [f"warning: {w}" for w in self.warnings] or ["no warning"]
        return "\n".join(lines)


def _table(title: str, arrays: list[ArrayInfo], dims: bool = False) -> list[str]:
    """The table of ``arrays`` under the heading ``title``, one row each; nothing when there are none."""
    if not arrays:
        return []
    head = (title, *(("dims",) if dims else ()), "shape", "dtype", "chunks", "decoded", "stored", "ratio")
    rows = [(*head, "compression")]
    for a in arrays:
        named = (f"({', '.join(a.dims)})" if a.dims is not None else "-",) if dims else ()
        rows.append(
            (
                a.name,
                *named,
                str(a.shape),
                a.dtype,
                str(a.chunks),
                format_bytes(a.decoded_bytes),
                format_bytes(a.stored_bytes),
                f"{a.ratio:.2f}x",
                a.compressors,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _codecs(array: Any) -> str:
    names = []
    for codec in tuple(array.compressors):
        cname = getattr(codec, "cname", None)
        label = type(codec).__name__.removesuffix("Codec").lower()
        names.append(f"{label}-{getattr(cname, 'value', cname)}" if cname is not None else label)
    return "+".join(names) or "none"


def _loader_layout(
    row: list[tuple[str, Any]], batch_size: int, budget: int, attrs: dict
) -> tuple[Layout, str, dict[str, float], list[str]]:
    """The layout a loader over ``row`` would choose (the loader's own code, the labels' grouping measured as a
    loader measures it), what it would cost here, and the grouping of each array that looks like class labels
    with the warnings about it."""
    specs = [ArraySpec(name, row_bytes(arr), chunk_bounds(arr)) for name, arr in row]
    mixed = all(written_shuffled(arr.attrs) for _, arr in row)
    options = LoaderOptions(batch_size=batch_size, memory_budget=budget, seed=0)
    n = row[0][1].shape[0]
    layout = choose_layout(specs, n, options, mixed=mixed)
    mixing, sorted_warnings = _label_mixing(row, attrs, layout)
    arrays = dict(row)
    ranges = sampled_units(layout.chunk_bounds)
    # What a loader that takes these arrays as its labels measures: each within the cost it allows, or none.
    within = all(read_cost(arrays[name], ranges) <= LABEL_WHOLE_BYTES for name in mixing)
    layout = choose_layout(specs, n, options, mixed=mixed, labels=lambda _bounds: mixing if within else {})
    return layout, _cost(row, specs, layout), mixing, sorted_warnings


def _cost(row: list[tuple[str, Any]], specs: list[ArraySpec], layout: Layout) -> str:
    """What ``layout`` costs here, timed on one chunk read."""
    unit = dict(row)[layout.unit_array]
    rows = min(int(unit.chunks[0]), unit.shape[0])
    started = time.perf_counter()
    try:
        unit[0:rows]  # one chunk, to time decoding here
    except Exception as err:
        return f"not timed: chunk 0 of {layout.unit_array!r} could not be read ({type(err).__name__}: {err})"
    rate = rows * next(a.bytes_per_sample for a in specs if a.name == layout.unit_array)
    rate /= max(time.perf_counter() - started, 1e-6)
    if layout.resident:
        first = sum(a.nbytes for a in specs)
        epoch = f"later epochs decode nothing (all {format_bytes(first)} held)"
    else:
        windowed = sum(a.bytes_per_sample for a in specs if a.name in layout.windowed)
        first = min(layout.decoded_per_epoch, layout.window_samples * layout.reads_per_chunk * windowed)
        first += layout.held_bytes
        epoch = f"an epoch decodes {format_bytes(layout.decoded_per_epoch)} (~{layout.decoded_per_epoch / rate:.1f}s)"
    return f"first batch in ~{first / rate:.1f}s, {epoch}, at {rate / 1e6:,.0f} MB/s (one chunk read here)"


def _rewrite(row: list[tuple[str, Any]], where: str, roles: DatasetRoles | None = None) -> str:
    if roles is not None and "://" not in where and os.path.isdir(where):  # the whole store: coordinates too
        dest = (where[:-5] if where.endswith(".zarr") else where.rstrip("/")) + "-daskfeed.zarr"
        return (
            "Rewrite the store with equal chunks of ~4 MiB in random order, once, and train from the copy (its "
            f"coordinates go along): daskfeed ingest {where} {dest} --shuffle --seed 0"
        )
    command = rewrite_command([arr for _, arr in row])
    return command or (
        f"Rewrite it with equal chunks of ~4 MiB in random order: daskfeed ingest {where} NEW.zarr --shuffle"
    )


def info(
    store: Any, *, batch_size: int = 32, memory_budget: int | str = DEFAULT_MEMORY_BUDGET, verify: bool = False
) -> StoreInfo:
    """Describe a zarr store and warn about layouts that make training slow or badly mixed.

    Parameters
    ----------
    store : str, os.PathLike, zarr.Group or zarr.Array
        A local path or fsspec URL of a zarr store, or an open group or array.
    batch_size : int, default 32
        The batch size you will train with; chunks much shorter than a batch are flagged.
    memory_budget : int or str, default 1 GiB
        The loader's budget; chunks too large for a window of it to draw from many of them are flagged.
    verify : bool, default False
        List the store and compare it with each array's chunk grid: every chunk missing from the store (which
        zarr would serve as the fill value) is a warning naming the array, chunks and samples, and samples
        missing in one array but present in another are flagged as damage. One listing per array; no chunk is read.

    Returns
    -------
    StoreInfo
        ``str()`` of it is the report the ``daskfeed info`` command prints.

    Notes
    -----
    ``loader`` is the loader's own decision for this store, batch size and budget (the code that builds its
    plan): read units, arrays held whole, reads per chunk, decode amplification; ``estimate`` is what that
    costs here, timed on one chunk read. Warnings: chunks split along axes after the sample axis (every sample
    then needs several chunk reads); chunks too small (per-read overhead dominates); a layout that decodes
    more than twice the data it serves (with the ``daskfeed ingest`` command that fixes it); arrays of
    different lengths; and, unless the data fits the budget, integer arrays of class labels whose chunks each
    hold a different mix of classes than the whole (a store sorted or grouped by label). The label check reads
    up to 64 chunks spread over the store.

    Examples
    --------
    >>> import numpy as np, zarr, daskfeed
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> _ = root.create_array("y", data=np.repeat(np.arange(4), 250), chunks=(100,))
    >>> report = daskfeed.info(root, memory_budget="20KB")
    >>> round(report.label_grouping["y"], 2)
    0.93
    >>> "sorted" in report.warnings[-1]
    True
    >>> report.loader
    '10 read units (chunks of y); reads_per_chunk=3, window<=416 samples, decode amplification 3.00x'
    >>> daskfeed.info(root).loader  # the default budget holds it all
    '10 read units (chunks of y); all fits the budget: decoded once, then full shuffles in memory'
    """
    budget = parse_bytes(memory_budget)
    where, members, attrs = _members(store)
    roles = store_roles(dict(members), attrs)
    arrays = [
        ArrayInfo(
            name=name,
            shape=tuple(arr.shape),
            dtype=str(arr.dtype),
            chunks=tuple(arr.chunks),
            decoded_bytes=int(arr.nbytes),
            stored_bytes=int(arr.nbytes_stored()),
            compressors=_codecs(arr),
            dims=roles.dims.get(name) if roles is not None else None,
            role="array" if roles is None else "coordinate" if name in roles.coordinates else "variable",
        )
        for name, arr in members
    ]
    warnings = _shape_warnings(arrays, roles, where)
    missing: dict[str, list[tuple[int, ...]] | None] = {}
    if verify:
        missing, notes = _verify(members)
        warnings += notes
    numeric = [(name, arr) for name, arr in members if getattr(arr.dtype, "kind", "O") in TENSOR_KINDS]
    for name, arr in members:
        if (name, arr) in numeric:
            continue
        if roles is not None and name in roles.coordinates:
            warnings.append(
                f"coordinate {name!r} has dtype {arr.dtype}, which daskfeed ingest cannot carry (only numbers): "
                f"ingest the variables by path ({where}/{roles.variables[0]} ...) to leave it out"
            )
        else:
            warnings.append(
                f"{name!r} has dtype {arr.dtype}, which cannot become a tensor: a loader cannot read it (encode "
                "strings or objects as numbers first, or leave the array out)"
            )
    dataset = {}
    if roles is not None:
        inputs = [(name, arr) for name, arr in numeric if name in roles.variables]
        row = (
            [(name, arr) for name, arr in inputs if arr.shape and arr.shape[0] == inputs[0][1].shape[0]]
            if inputs
            else []
        )
        dataset = {
            "sample_dim": roles.sample_dim,
            "variables": list(roles.variables),
            "coords": list(roles.coords),
            "kept": list(roles.kept),
            "summary": roles.describe(),
        }
    else:
        weight: dict[int, int] = {}  # the samples' length: the one of the arrays that hold the most bytes
        for _name, arr in numeric:
            if arr.shape:
                weight[arr.shape[0]] = weight.get(arr.shape[0], 0) + int(arr.nbytes)
        length = max(weight, key=lambda n: weight[n]) if weight else None
        row = [(name, arr) for name, arr in numeric if arr.shape and arr.shape[0] == length]
    if not row:
        return StoreInfo(where, arrays, attrs, warnings, missing=missing, dataset=dataset)
    layout, estimate, mixing, sorted_warnings = _loader_layout(row, batch_size, budget, attrs)
    warnings += _layout_warnings(row, layout, batch_size, budget, where, roles)
    return StoreInfo(
        where,
        arrays,
        attrs,
        warnings + sorted_warnings,
        mixing,
        layout.describe(),
        estimate,
        missing=missing,
        dataset=dataset,
    )


def _verify(members: list[tuple[str, Any]]) -> tuple[dict[str, list[tuple[int, ...]] | None], list[str]]:
    """Each array's missing chunks, and a warning per array lacking some plus one per damaged sample range."""
    reports = {name: find_missing(arr, name) for name, arr in members}
    found = [r for r in reports.values() if r is not None]
    notes = [
        f"{r.describe()}: zarr serves them as the fill value (copy the store again, or pass the loader "
        "missing_chunks='fill' if they are meant to be empty)"
        for r in found
        if r.missing
    ]
    lengths = {r.n_samples for r in found}
    if len(lengths) == 1:
        notes += [f"{note}: arrays that disagree point to a store copied or written halfway" for note in damage(found)]
    return {name: (None if r is None else list(r.missing)) for name, r in reports.items()}, notes


def _members(store: Any) -> tuple[str, list[tuple[str, Any]], dict]:
    """Where the store is, its arrays by name (sorted), and its attributes."""
    import zarr

    node, found = open_zarr_node(store)
    where = str(node.store_path) if isinstance(store, (zarr.Group, zarr.Array)) else os.fspath(store)
    if found is None:
        return where, [(os.path.basename(where.rstrip("/")) or "array", node)], {}
    return where, sorted(found.items(), key=lambda m: m[0]), dict(node.attrs.asdict())


def _shape_warnings(arrays: list[ArrayInfo], roles: DatasetRoles | None, where: str) -> list[str]:
    """Arrays of different lengths, and arrays chunked along axes after the sample axis. In a store xarray
    wrote only the arrays along the sample dimension share a length; the others are no loader's input."""
    warnings: list[str] = []
    along = [a for a in arrays if a.shape and (roles is None or a.name in roles.along)]
    lengths = {a.name: a.shape[0] for a in along}
    if len(set(lengths.values())) > 1:
        common = max(set(lengths.values()), key=lambda n: sum(a.decoded_bytes for a in along if a.shape[0] == n))
        same = [a.name for a in along if a.shape[0] == common]
        paths = " ".join(f"{where.rstrip('/')}/{name}" for name in same)
        keys = ", ".join(f"arrays[{name!r}]" for name in same)
        warnings.append(
            "arrays differ in length on axis 0 (samples): "
            + ", ".join(f"{k!r} {v}" for k, v in lengths.items())
            + f"; only arrays of the same length can feed one loader (pass those by name: {keys}; to rewrite "
            f"them: daskfeed ingest {paths} NEW.zarr)"
        )
    if roles is not None:
        for name, axis in roles.misplaced.items():
            warnings.append(
                f"{name!r} has the sample dimension {roles.sample_dim!r} on axis {axis} (dims {roles.dims[name]}): "
                "a loader takes samples along axis 0, and ingest refuses it; transpose it first "
                f"(ds[{name!r}].transpose({roles.sample_dim!r}, ...).to_zarr(...))"
            )
    arrays = [a for a in arrays if roles is None or a.name in roles.variables]
    for a in arrays:
        if a.shape and a.chunks[1:] != a.shape[1:]:
            split = [i + 1 for i, (c, s) in enumerate(zip(a.chunks[1:], a.shape[1:])) if c < s]
            reads = math.prod(math.ceil(s / c) for c, s in zip(a.chunks[1:], a.shape[1:]))
            warnings.append(
                f"{a.name!r} is chunked along axis {', '.join(map(str, split))} too (chunks {a.chunks} for shape "
                f"{a.shape}): every sample needs {reads} chunk reads. Rewrite it with `daskfeed ingest` "
                "(which keeps axes after the sample axis whole), or rechunk those axes to their full length"
            )
    return warnings


def _layout_warnings(
    row: list[tuple[str, Any]],
    layout: Layout,
    batch_size: int,
    budget: int,
    where: str,
    roles: DatasetRoles | None,
) -> list:
    """Chunks shorter than a batch or too small to be worth a read, and a layout that decodes too much (whose
    fix is a rewrite in random order, unless the labels are mixed already: then more budget or smaller chunks)."""
    warnings = []
    chunk_len = min(int(arr.chunks[0]) for _, arr in row)  # the shortest read
    chunk_bytes = chunk_len * sum(row_bytes(arr) for _, arr in row)
    if chunk_len < batch_size:
        warnings.append(
            f"chunks of {chunk_len} samples are shorter than a batch of {batch_size}: every batch needs several "
            "chunk reads. Store at least a batch per chunk (daskfeed ingest picks ~4 MiB chunks)"
        )
    elif chunk_bytes < SMALL_CHUNK_BYTES:
        warnings.append(
            f"chunks are small ({chunk_len} samples = {format_bytes(chunk_bytes)} decoded over all arrays): "
            "per-read overhead will dominate decoding. Aim for 1-16 MiB (daskfeed ingest picks ~4 MiB)"
        )
    chunks = [(name, np.dtype(arr.dtype).itemsize * math.prod(arr.chunks)) for name, arr in row]
    limit = decode_limit(chunks, budget, usable_cores(), DEFAULT_CONCURRENCY).warning()
    if limit is not None:
        warnings.append(f"{limit} {_rewrite(row, where, roles)}")
    if layout.amplification > WARN_AMPLIFICATION:
        said = (
            f"at memory_budget={format_bytes(budget)} the loader decodes {layout.amplification:.1f}x the data it "
            f"serves every epoch ({layout.reason})."
        )
        if layout.labels_mixed:  # mixed already: the reads are what holding a chunk in a window takes
            grouping = ", ".join(f"{name!r} {d:.2f}" for name, d in layout.label_grouping.items())
            warnings.append(
                f"{said} The labels are mixed already (grouping {grouping}; 0 is a random order), so no rewrite "
                "in random order is needed: a larger memory_budget, or smaller chunks, let it read each chunk once"
            )
        else:
            warnings.append(f"{said} {_rewrite(row, where, roles)}")
    return warnings


def _label_mixing(row: list[tuple[str, Any]], attrs: dict, layout: Layout) -> tuple[dict[str, float], list[str]]:
    """The grouping of each array that looks like class labels, and a warning where a loader would see it."""
    mixing, warnings = {}, []
    for name, arr in row:
        if not looks_like_labels(arr.dtype, arr.shape[1:]):
            continue
        try:
            distance = label_grouping(arr, layout.chunk_bounds)
        except Exception as err:  # a damaged chunk: report it, and go on describing the store
            warnings.append(f"{name!r}: a chunk could not be read ({type(err).__name__}: {err}); the store is damaged")
            continue
        if distance is None:
            continue
        mixing[name] = distance
        if distance > SORTED_DISTANCE and not written_shuffled(attrs) and not layout.resident:
            warnings.append(
                f"labels {name!r} look sorted or grouped along the sample axis (grouping {distance:.2f}; 0 is a "
                "random order): a window of few chunks sees few classes. Rewrite the store with `daskfeed "
                "ingest --shuffle`, or keep reads_per_chunk='auto' (the default), which reads each chunk several "
                "times per epoch to mix them"
            )
    return mixing, warnings

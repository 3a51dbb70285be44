"""LoaderOptions: the knobs of a loader, validated once; the one place they are documented."""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import InputError, InputTypeError, MemoryBudgetError

_log = logging.getLogger("daskfeed")

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KNOBS",
    "LoaderOptions",
    "Shard",
    "check_int",
    "check_shared_seed",
    "parse_bytes",
    "parse_loader_options",
]

#: 1 GiB: small enough for a laptop, large enough that a window holds dozens of typical chunks.
DEFAULT_MEMORY_BUDGET = 2**30
#: No machine has more; a larger number is a typo (and overflows the plan's int64 arithmetic).
MAX_MEMORY_BUDGET = 2**60
#: What ``missing_chunks=`` may be.
MISSING_CHUNKS = ("warn", "error", "fill")
#: Names dask's ``scheduler=`` understands, besides a ``distributed.Client``.
_SCHEDULER_NAMES = ("threads", "threading", "synchronous", "sync", "single-threaded", "processes", "multiprocessing")


def parse_bytes(value: int | float | str, name: str = "memory_budget") -> int:
    """``"512MB"`` -> ``512_000_000``; ``"1GiB"`` -> ``1_073_741_824``; ints, and floats that are a whole number of
    bytes (``1e9``), pass through.

    Parsing is dask's (``dask.utils.parse_bytes``); errors name the argument.

    Examples
    --------
    >>> parse_bytes("512MB"), parse_bytes("1.5 GiB"), parse_bytes(4096), parse_bytes(1e9)
    (512000000, 1610612736, 4096, 1000000000)
    """
    from dask.utils import parse_bytes as dask_parse_bytes

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.integer, np.floating)):
        raise MemoryBudgetError(
            f"{name} must be a number of bytes or a string like '512MB', got {type(value).__name__} {value!r}"
        )
    if isinstance(value, (float, np.floating)):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise MemoryBudgetError(
                f"{name} must be a whole number of bytes, got {value!r}; round it (int({value!r})) or give a size "
                "string like '512MB' or '1.5GiB'"
            )
        value = int(value)
    if isinstance(value, str):
        try:
            value = dask_parse_bytes(value)
        except (ValueError, TypeError):
            raise MemoryBudgetError(
                f"{name}={value!r} is not a size; expected bytes as an int or a string like '512MB' or '2GiB'"
            ) from None
    if value <= 0:
        raise MemoryBudgetError(f"{name} must be positive, got {value}")
    if value > MAX_MEMORY_BUDGET:
        raise MemoryBudgetError(f"{name}={value} is larger than any machine's memory; expected at most 2**60 bytes")
    return int(value)


def check_int(name: str, value: Any, minimum: int, also: str = "") -> int:
    """``value`` as an int, or an error naming ``name`` if it is not an int >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int >= {minimum}{' ' + also if also else ''}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}{' ' + also if also else ''}, got {value}")
    return int(value)


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0:  # also refuses NaN
        raise InputError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class Shard:
    """``(index, count)``: one of ``count`` disjoint shares of the read units that together make an epoch.

    ``origin`` says where a shard that was not given as a tuple came from: ``"jax"`` (this process's share in
    a multi-process JAX job, the default there, see :meth:`default`) or ``"tf.distribute"`` (a
    ``tf.distribute.InputContext``). It is shown, and not compared: ``Shard(1, 2, origin="jax") == Shard(1, 2)``.

    Examples
    --------
    >>> Shard.parse((1, 4))
    Shard(index=1, count=4)
    >>> Shard.parse(None)  # in a process that is not one of several JAX processes
    Shard(index=0, count=1)
    """

    index: int
    count: int
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (self.index, self.count)):
            raise InputTypeError(f"shard must be a tuple (index, count) of two ints, got {self.as_tuple()!r}")
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise InputError(f"shard=(index, count) needs 0 <= index < count, got {self.as_tuple()!r}")
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "count", int(self.count))

    def __repr__(self) -> str:
        origin = f", origin={self.origin!r}" if self.origin else ""
        return f"Shard(index={self.index}, count={self.count}{origin})"

    def as_tuple(self) -> tuple[int, int]:
        return (self.index, self.count)

    @classmethod
    def parse(cls, value: Any) -> Shard:
        """A :class:`Shard` from ``None`` (:meth:`default`), a tuple ``(index, count)``, a Shard, or a
        ``tf.distribute.InputContext`` (its ``(input_pipeline_id, num_input_pipelines)``)."""
        if value is None:
            return cls.default()
        if isinstance(value, Shard):
            return value
        # Duck-typed so that this module needs no TensorFlow: what distribute_datasets_from_function passes.
        if hasattr(value, "input_pipeline_id") and hasattr(value, "num_input_pipelines"):
            return cls(value.input_pipeline_id, value.num_input_pipelines, origin="tf.distribute")
        if not (isinstance(value, tuple) and len(value) == 2):
            raise InputTypeError(
                f"shard must be a tuple (index, count) of two ints or a tf.distribute.InputContext, got {value!r}"
            )
        return cls(*value)

    @classmethod
    def default(cls) -> Shard:
        """The shard of a loader made without ``shard``: this process's share when it is one of several JAX
        processes, else the whole epoch.

        JAX counts as multi-process once ``jax.distributed.initialize()`` ran in this process (Keras's
        ``keras.distribution.initialize()`` runs it) and ``jax.process_count() > 1``; the shard is then
        ``(jax.process_index(), jax.process_count())``. JAX is never imported here, and asked only once its
        distributed system is up: asking earlier would start its backend, after which
        ``jax.distributed.initialize()`` refuses to run.
        """
        jax = sys.modules.get("jax")
        is_initialized = getattr(getattr(jax, "distributed", None), "is_initialized", None)
        if is_initialized is not None and is_initialized():
            count = jax.process_count()
            if count > 1:
                index = jax.process_index()
                _log.info("JAX process %d of %d: a loader made now serves shard=%r", index, count, (index, count))
                return cls(index, count, origin="jax")
        return cls(0, 1)


def check_shared_seed(options: LoaderOptions) -> None:
    """Refuse a shard of several whose seed was drawn: shards deal the read units by the seed, so shards that
    each drew their own seed overlap and leave samples out."""
    shard = options.shard
    if shard.count == 1 or not options.shuffle or not getattr(options, "_seed_drawn", False):
        return
    if shard.origin == "jax":
        why = (
            f"this is JAX process {shard.index} of {shard.count}, so the loader serves shard=({shard.index}, "
            f"{shard.count}) of the read units (see LoaderOptions.shard), and"
        )
    else:
        why = f"shard={shard.as_tuple()!r}"
        why += " (from the tf.distribute.InputContext)" if shard.origin == "tf.distribute" else ""
        why += " splits the read units between loaders, and"
    raise InputError(
        f"{why} the shards deal the read units by the seed, but seed=None draws a different seed in each "
        "loader, so shards would overlap and leave samples out; pass the same seed to every shard (seed=0, or "
        "one seed the job chose)"
        + (", or shard=(0, 1) for the whole epoch in every process" if shard.origin == "jax" else "")
    )


@dataclass(frozen=True)
class LoaderOptions:
    """The knobs of a loader; :func:`daskfeed.as_sequence`, :func:`daskfeed.as_dataset` and
    :class:`daskfeed.Loader` take each of them as a keyword argument.

    Parameters
    ----------
    batch_size : int, default 32
        Samples per batch; the last batch of an epoch may be smaller unless ``drop_remainder``.
    shuffle : bool, default True
        Shuffle samples across chunks each epoch. ``False`` serves storage order.
    seed : int, optional
        Seed of the shuffle; the same seed gives the same batches, bit for bit, in every run, from both
        front-ends and with any number of threads. ``None`` draws one (see ``loader.seed``).
    drop_remainder : bool, default False
        Drop the last, smaller batch of each epoch (gives ``as_dataset`` a static batch dimension).
    memory_budget : int, float or str, default 1 GiB
        Bytes of decoded data the loader may hold at once (``"512MB"``, ``"2GiB"``, an int, or a float that is a
        whole number of bytes such as ``1e9``). When every
        array fits with room to serve, all chunks are decoded once, in parallel, before the first batch, and
        every epoch is a full shuffle in memory. Otherwise small arrays (labels, weights: up to 5% of the
        budget together) are held whole and the rest is read in windows: three at once (one served, two
        computed ahead), each a third of what is left.
    reads_per_chunk : int or "auto", default "auto"
        How many times each chunk is read per epoch, each read keeping a disjoint share of its samples. More
        reads mix samples from more places of the array at the same memory, for more decoding. ``1`` decodes
        every chunk once per epoch. ``"auto"`` reads a chunk more than once only when a window could not
        otherwise draw from about 32 places of the array (or hold a chunk at all), and never for stores
        ``daskfeed ingest --shuffle`` wrote. Data that fits the budget is decoded once, whatever this says.
    scheduler : str or distributed.Client, optional
        The dask scheduler that computes chunks: ``None`` (dask's configured default), ``"threads"``,
        ``"synchronous"``, ``"processes"``, or a ``distributed.Client``.
    shard : tuple of (int, int) or tf.distribute.InputContext, optional
        ``(index, count)``: serve only this worker's share of the read units, the same share every epoch;
        the ``count`` shards partition each epoch (shards are whole read units, so their lengths may differ
        by up to a chunk). Every shard needs the same ``seed`` (a drawn one is refused). Inside
        ``strategy.distribute_datasets_from_function(fn)`` pass ``fn``'s ``tf.distribute.InputContext`` itself:
        ``shard=ctx`` is ``(ctx.input_pipeline_id, ctx.num_input_pipelines)``. Not given: the whole epoch,
        except in a process that is one of several JAX processes (``keras.distribution`` across hosts, after
        ``jax.distributed.initialize()``): there ``(jax.process_index(), jax.process_count())``, so that each
        process feeds its own part of the global batch, and ``batch_size`` is that part (global batch //
        processes). ``loader.options.shard`` shows which: ``Shard(index=1, count=2, origin='jax')``.
        :func:`daskfeed.as_dataset` takes no such default (Keras and ``tf.distribute`` shard a
        ``tf.data.Dataset`` themselves): it serves the whole epoch unless given ``shard``.
    missing_chunks : {"warn", "error", "fill"}, default "warn"
        What to do about chunk files missing from a zarr store, which zarr serves as the fill value (zeros).
        The loader lists the store of each zarr array it reads as such (``open_zarr``, a ``zarr.Array``
        passed as is, or ``da.from_zarr(z)`` with nothing on top) once when it is made, no chunk read. ``"warn"`` warns
        once, naming the arrays, chunks and samples; ``"error"`` raises :class:`daskfeed.StoreError`;
        ``"fill"`` does not look. Arrays ``daskfeed ingest`` marked ``every_chunk`` have every chunk, so there
        a missing chunk is an error unless ``"fill"``. HTTP stores cannot be listed: ``"warn"`` skips them,
        ``"error"`` refuses them.
    no_workers_timeout : float, default 60
        Seconds a read on a ``distributed`` cluster waits while the cluster has no workers before it fails
        with :class:`daskfeed.ChunkReadError` (a cluster scaled to zero, nannies that gave up).
    concurrency : int, default 32
        Chunk requests the loader keeps in flight at once to a store that is not a local directory (S3,
        HTTP, GCS, a wrapping store): each request waits on the network, so many at once keep every core
        decoding. Local chunk files are read by the decoding threads, one per usable core, whatever this says.
    window : dict of {int: int}, optional
        What one sample is, when it is not one row: ``{axis: length}``. A sample is then the block of ``x`` that
        starts at a point of the ``stride`` grid and spans ``length`` on each named axis (the full extent on the
        others); the samples are every such block that fits inside the array, each served once per epoch,
        shuffled as rows are. Batch leaves have the shape ``(batch, *window shape)``.
        On axis 0 (a series, ``window={0: 48}``) every array of ``x`` is cut into windows of 48 rows, and ``y``
        and ``sample_weight`` are taken at the window's first row, as
        ``keras.utils.timeseries_dataset_from_array(x, y, sequence_length=48)`` does (shift targets yourself:
        ``x, y = series[:-48], series[48:]``). On other axes (patches, ``window={1: 64, 2: 64}``) every array
        with that axis at the length ``x`` has it is cut alike (a mask gets the patch under the image's patch);
        an array without it (a label per image) is served per image. Each chunk is still decoded once per epoch
        at ``reads_per_chunk=1``: the rows windows reach into the next chunk (their first ``window[0] - 1``) are
        read once and held, within the budget. ``x`` of a dict is its first array that has every axis named.
    stride : dict of {int: int}, optional
        ``{axis: step}`` between the starts of neighbouring samples on the axes ``window`` names; an axis left
        out steps by its window length (no overlap). ``stride={0: 1}`` gives every window of a series.
    transform : callable, optional
        ``transform(batch, rng) -> batch``, called on daskfeed's threads with each batch as the door serves it
        (``x``, ``(x, y)`` or ``(x, y, sample_weight)``, numpy leaves, dicts kept) and a
        ``numpy.random.Generator`` seeded by (``seed``, shard, epoch, batch index): random augmentation is then
        new every epoch and the same for the same seed. It returns a batch of the same structure; leaf shapes may
        change (``as_dataset`` takes its ``element_spec`` from the transformed batch 0, so every batch must keep
        the shapes after the batch axis). An error inside it is a :class:`daskfeed.DaskfeedError` naming the
        batch and epoch, with the original as ``__cause__``. Lazy dask work on the arrays themselves
        (``x.map_blocks(random_flip)``) is data, not augmentation: computed once when the data fits the budget.

    Examples
    --------
    >>> from daskfeed import LoaderOptions
    >>> options = LoaderOptions(batch_size=128, seed=0, memory_budget="512MB")
    >>> options.memory_budget, options.shard
    (512000000, Shard(index=0, count=1))
    >>> LoaderOptions(batch_size=0)
    Traceback (most recent call last):
    ...
    daskfeed.errors.InputError: batch_size must be >= 1, got 0
    """

    batch_size: int = 32
    shuffle: bool = True
    seed: int | None = None
    drop_remainder: bool = False
    memory_budget: int | float | str = DEFAULT_MEMORY_BUDGET
    reads_per_chunk: int | str = "auto"
    scheduler: Any = None
    shard: Shard | tuple[int, int] | None = None
    missing_chunks: str = "warn"
    no_workers_timeout: float = 60.0
    concurrency: int = 32
    window: dict[int, int] | None = None
    stride: dict[int, int] | None = None
    transform: Any = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("batch_size", check_int("batch_size", self.batch_size, 1))
        put("shuffle", _check_bool("shuffle", self.shuffle))
        put("drop_remainder", _check_bool("drop_remainder", self.drop_remainder))
        # Not a field: read by check_shared_seed, which refuses shards of one job that drew their own seeds.
        put("_seed_drawn", self.seed is None)
        put("seed", secrets.randbits(63) if self.seed is None else check_int("seed", self.seed, 0))
        if self.seed >= 2**63:
            raise InputError(f"seed must be < 2**63, got {self.seed}")
        put("memory_budget", parse_bytes(self.memory_budget))
        if self.reads_per_chunk != "auto":
            put("reads_per_chunk", check_int("reads_per_chunk", self.reads_per_chunk, 1, also="or 'auto'"))
            if not self.shuffle and self.reads_per_chunk != 1:
                raise InputError(
                    f"shuffle=False serves samples in storage order, which reads each chunk once; got "
                    f"reads_per_chunk={self.reads_per_chunk}. Pass reads_per_chunk=1 or 'auto'."
                )
        _check_scheduler(self.scheduler)
        put("shard", Shard.parse(self.shard))
        if self.missing_chunks not in MISSING_CHUNKS:
            raise InputError(
                f"missing_chunks must be one of {', '.join(map(repr, MISSING_CHUNKS))}, got {self.missing_chunks!r}"
            )
        put("no_workers_timeout", _check_seconds("no_workers_timeout", self.no_workers_timeout))
        put("concurrency", check_int("concurrency", self.concurrency, 1))
        from daskfeed.samples import check_stride, check_window

        put("window", check_window(self.window))
        put("stride", check_stride(self.stride, self.window))
        from daskfeed.transform import check_transform

        put("transform", check_transform(self.transform))


#: The names of the knobs, in the order of :class:`LoaderOptions`.
KNOBS = tuple(f.name for f in dataclasses.fields(LoaderOptions))


def _check_scheduler(scheduler: Any) -> None:
    if scheduler is None or callable(getattr(scheduler, "get", None)):
        return
    if isinstance(scheduler, str) and scheduler in _SCHEDULER_NAMES:
        return
    raise InputError(
        f"scheduler must be None, one of {', '.join(map(repr, _SCHEDULER_NAMES))}, or a distributed.Client; "
        f"got {scheduler!r}"
    )


def parse_loader_options(options: LoaderOptions | Mapping | None = None, **knobs: Any) -> LoaderOptions:
    """A :class:`LoaderOptions` from an options object, a dict of knobs or None, with ``knobs`` on top.

    Unknown knob names are an error that lists the known ones.
    """
    if options is None:
        base: dict = {}
    elif isinstance(options, LoaderOptions):
        if not knobs:
            return options
        base = {name: getattr(options, name) for name in KNOBS}
    elif isinstance(options, Mapping):
        base = dict(options)
    else:
        raise InputTypeError(f"options must be a LoaderOptions, a dict of knobs or None, got {type(options).__name__}")
    base.update(knobs)
    unknown = sorted(set(base) - set(KNOBS))
    if unknown:
        raise InputTypeError(f"unknown loader option {unknown[0]!r}; the options are {', '.join(KNOBS)}")
    parsed = LoaderOptions(**base)
    if "seed" not in knobs and getattr(options, "_seed_drawn", False):
        object.__setattr__(parsed, "_seed_drawn", True)  # the seed options drew is still a drawn one
    return parsed

"""The framework-free core: plan + prefetch -> numpy batches, with epochs, stats and close()."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from daskfeed import heap
from daskfeed.cache import CacheStats, WindowCache
from daskfeed.errors import DaskfeedError, DaskfeedWarning, InputError, InputTypeError, LayoutWarning, warn
from daskfeed.inputs import Inputs, normalize_inputs, rewrite_hint, zarr_behind
from daskfeed.integrity import StoreWatch, check_missing
from daskfeed.interrupts import Interrupts
from daskfeed.layout import WARN_AMPLIFICATION, DecodeLimit, Layout, choose_layout, decode_limit
from daskfeed.mixing import LABEL_WHOLE_BYTES, label_grouping, looks_like_labels
from daskfeed.options import LoaderOptions, check_int, check_shared_seed, parse_loader_options
from daskfeed.parts import Part, Subset
from daskfeed.plan import EpochPlan, PlanConfig
from daskfeed.read import GraphRunner, usable_cores
from daskfeed.samples import Cut, sample_geometry
from daskfeed.state import Position, check_state, fingerprint, make_state
from daskfeed.transform import Ahead, apply_transform, transform_rng
from daskfeed.windows import decoded_at_once, window_maker

__all__ = ["Loader"]

_iter_ids = itertools.count()
#: Guards the check that a loader is iterated by one loop at a time.
_ITERATING = threading.Lock()


def _after_fork_in_child() -> None:
    global _ITERATING
    _ITERATING = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Runtime:
    """What a loader holds at run time and drops when pickled or closed: window cache, arrays, plans.

    Nothing in it refers back to the loader, so a loader that is dropped is collected (and its finalizer
    closes this): the cache asks this object, not the loader, for plans.
    """

    def __init__(self, loader: Loader):
        self.pid = os.getpid()
        weak = weakref.ref(loader)  # the pool's threads must not keep the loader alive

        def make(epoch: int, index: int) -> Any:
            owner = weak()
            if owner is None:
                raise DaskfeedError("this loader was freed while a transformed batch was made ahead")
            return owner._batch(index, epoch)

        def serving() -> int:
            owner = weak()
            return owner.epoch if owner is not None else -1

        #: Transformed batches made ahead for a caller that asks one at a time (``transform=`` only).
        self.ahead = Ahead(make)
        self.lock = threading.Lock()
        self.config = loader.config
        self.plans: dict[int, EpochPlan] = {}
        self.maker = window_maker(loader.inputs, loader.layout, loader._scheduler, loader._watch)
        maker = self.maker
        self.cache = WindowCache(maker.make, self.plan, lambda: maker.held_nbytes, serving)

    def plan(self, epoch: int) -> EpochPlan:
        with self.lock:
            plan = self.plans.get(epoch)
            if plan is None:
                plan = EpochPlan(self.config, epoch)
                if len(self.plans) >= 4:  # plans are O(read units); keep the few epochs in use at once
                    self.plans.pop(min(self.plans))
                self.plans[epoch] = plan
            return plan


class Loader:
    """Shuffled batches of numpy arrays from chunked arrays, computed ahead within a memory budget.

    This is the framework-free core behind :func:`daskfeed.as_sequence` and :func:`daskfeed.as_dataset`.
    Batch ``i`` of epoch ``e`` is a pure function of the data, the seed and the knobs, whatever order
    batches are asked for in and from however many threads.

    Parameters
    ----------
    x, y, sample_weight
        As for :func:`daskfeed.as_sequence`.
    options : LoaderOptions or dict, optional
        The knobs; any of them may also be given as a keyword (``batch_size=128``), see
        :class:`daskfeed.LoaderOptions`.

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x = np.arange(10).reshape(10, 1)
    >>> with daskfeed.Loader(x, x[:, 0] * 2, batch_size=4, shuffle=False) as loader:
    ...     [b[1].tolist() for b in loader]
    [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    """

    #: Batches that iterating over a loader assembles ahead of the caller (outside the memory budget), cut
    #: :attr:`BATCHES_PER_RUN` at a time (one copy per run, and a quarter of the hand-overs between threads).
    BATCHES_AHEAD = 8
    BATCHES_PER_RUN = 4

    def __init__(
        self, x: Any, y: Any = None, sample_weight: Any = None, *, options: LoaderOptions | None = None, **knobs: Any
    ):
        self.options = parse_loader_options(options, **knobs)
        heap.threshold()  # DASKFEED_MMAP_THRESHOLD: a bad value fails here, not in a reading thread
        #: The part of :func:`daskfeed.split` this loader serves, or None for every sample.
        self.subset: Subset | None = None
        if isinstance(x, Part):
            if y is not None or sample_weight is not None:
                raise InputError(
                    "a part of daskfeed.split carries its arrays (x, y and sample_weight): pass the part alone, "
                    "as in as_sequence(part, batch_size=...)"
                )
            x, y, sample_weight, self.subset = x.x, x.y, x.sample_weight, x.subset
        self.inputs: Inputs = normalize_inputs(x, y, sample_weight)
        mixed = self.inputs.written_shuffled()
        #: What a sample is when ``window=`` cuts samples out of rows; None for one sample per row.
        self.geometry = sample_geometry(self.inputs, self.options.window, self.options.stride)
        if mixed and self.geometry is not None and self.geometry.series:
            warn(
                f"window={self.options.window!r} cuts windows of consecutive rows, but these arrays were written in "
                "random order (daskfeed ingest --shuffle): each window joins rows of unrelated samples. Cut windows "
                "from a store in its original order: the source, or daskfeed ingest without --shuffle",
                DaskfeedWarning,
            )
        self.layout: Layout = choose_layout(
            self.inputs.leaves,
            self.inputs.n_samples,
            self.options,
            mixed=mixed,
            geometry=self.geometry,
            labels=_labels(self.inputs),
        )
        self.config: PlanConfig = self.layout.plan_config(self.options, self.subset)
        check_shared_seed(self.options)  # after the layout: a shard count above the read units is named first
        # Chunks being decoded stay within a share of the budget (beyond it): fewer at once where chunks are large.
        self.decode_limit: DecodeLimit = decode_limit(
            [(leaf.name, decoded_at_once(leaf.array)) for leaf in self.inputs.leaves if leaf.lazy],
            self.options.memory_budget,
            usable_cores(),
            self.options.concurrency,
        )
        self._scheduler = GraphRunner(
            self.options.scheduler,
            no_workers_timeout=self.options.no_workers_timeout,
            concurrency=self.decode_limit.in_flight,
            threads=self.decode_limit.threads,
        )
        if self.decode_limit.warning() is not None:
            warn(f"{self.decode_limit.warning()} {rewrite_hint(self.inputs, self._series)}", LayoutWarning)
        leaves = self.inputs.leaves
        zarrs = [(leaf.name, z) for leaf in leaves if leaf.lazy and (z := zarr_behind(leaf.array)) is not None]
        check_missing(zarrs, self.options.missing_chunks)
        #: Checked after each read, so that no batch mixes two versions of a store (one replaced under the loader).
        self._watch = StoreWatch(zarrs)
        #: The one place in the stream of batches (see :attr:`position`).
        self._position = Position(0, 0)
        first = EpochPlan(self.config, 0)
        if first.n_batches == 0:
            raise InputError(
                f"drop_remainder=True with batch_size={self.batch_size} leaves no batch: this shard has only "
                f"{first.n_samples} samples"
            )
        self._n_batches = first.n_batches
        self._runtime: _Runtime | None = None
        self._closed = False
        self._iterating = False
        self._final_stats: dict | None = None
        if self.layout.amplification > WARN_AMPLIFICATION and self.options.reads_per_chunk == "auto":
            warn(
                f"this layout decodes {self.layout.amplification:.1f}x the data it serves every epoch "
                f"({self.layout.describe()}; {self.layout.reason}). {self._advice()}",
                LayoutWarning,
            )
        self._error: DaskfeedError | None = None
        Interrupts.opened(self)  # so that Ctrl-C reaches a batch that tf.data's thread waits for, until closed

    # -- public surface -------------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def reads_per_chunk(self) -> int:
        return self.layout.reads_per_chunk

    @property
    def memory_budget(self) -> int:
        return self.options.memory_budget

    @property
    def n_samples(self) -> int:
        """Samples of the arrays: rows of axis 0, or the windows ``window=`` cuts (all shards together; of a
        part of :func:`daskfeed.split`, the part's)."""
        if self.subset is not None:
            return int(self.config.lengths.sum())
        return self.inputs.n_samples if self.geometry is None else self.geometry.n_samples

    @property
    def served(self) -> tuple[Any, ...]:
        """Each leaf as batches serve it: its ``name``, ``sample_shape`` (a batch leaf is ``(batch,
        *sample_shape)``), ``dtype`` and ``bytes_per_sample``."""
        if self.geometry is not None:
            return self.geometry.cuts
        return tuple(Cut(leaf.name, False, (), leaf.sample_shape, leaf.dtype) for leaf in self.inputs.leaves)

    @property
    def position(self) -> Position:
        """Where the loader is: ``(epoch, next_batch)``, the one position its doors and callbacks ask.

        :meth:`set_epoch` and :meth:`restore` move it; iterating the loader moves ``next_batch`` with each batch
        served, an ``as_dataset`` iteration with each block handed to TensorFlow (:meth:`start_pass`), a
        :func:`daskfeed.as_sequence` once every batch of the epoch was served.
        """
        return self._position

    @property
    def epoch(self) -> int:
        """The current epoch; :meth:`set_epoch` moves it."""
        return self._position.epoch

    @property
    def error(self) -> DaskfeedError | None:
        """The first error that stopped a batch of this loader (a :class:`daskfeed.ChunkReadError` naming the
        array and chunk, a transform's error), or None.

        In ``fit`` and in a loop over an ``as_dataset`` dataset the batch is made in a TensorFlow thread, and
        TensorFlow raises its own ``tf.errors.UnknownError`` (or another ``OpError``) holding the text of this
        one; the error itself, its type, attributes and cause, is here: ``seq.loader.error`` for
        :func:`daskfeed.as_sequence`, ``ds.loader.error`` for :func:`daskfeed.as_dataset`.
        """
        return self._error

    @property
    def num_batches(self) -> int:
        """Batches per epoch; the same every epoch."""
        return self._n_batches

    def __len__(self) -> int:
        return self._n_batches

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since creation (see :class:`daskfeed.cache.CacheStats`: windows computed, batches and
        samples served, seconds waited and computing, ``peak_window_bytes``, stalls, ``bytes_decoded``), and
        the layout's decision: ``read_units``, ``reads_per_chunk``, ``resident`` (the data fits: decoded once)
        and ``amplification`` (bytes decoded per epoch over bytes served, after the first epoch)."""
        runtime = self._runtime
        if runtime is not None:
            with runtime.cache.cond:
                counted = runtime.cache.stats.as_dict()
        else:
            counted = dict(self._final_stats) if self._final_stats is not None else CacheStats().as_dict()
        return {
            **counted,
            "read_units": self.layout.n_units,
            "reads_per_chunk": self.layout.reads_per_chunk,
            "resident": self.layout.resident,
            "amplification": self.layout.amplification,
        }

    def set_epoch(self, epoch: int, next_batch: int = 0) -> None:
        """Move to the start of ``epoch`` (or to its batch ``next_batch``): a new order; windows of the epoch
        left are let go. The only way the epoch moves."""
        epoch = check_int("epoch", epoch, 0)
        next_batch = check_int("next_batch", next_batch, 0)
        if next_batch > self._n_batches:
            raise InputError(f"next_batch must be at most the {self._n_batches} batches of an epoch, got {next_batch}")
        old, self._position = self._position.epoch, Position(epoch, next_batch)
        runtime = self._runtime
        if runtime is not None and old != epoch:
            runtime.cache.forget_epoch(old)

    @property
    def fingerprint(self) -> str:
        """A digest of the data's shapes and chunking and of the knobs the batches depend on (both fixed at
        construction, so worked out once, not at every checkpoint)."""
        # Not a functools.cached_property: on Python 3.11 its lock, shared by every loader, is inherited held by
        # a process forked while another thread holds it. Two threads working it out at once agree.
        digest = self.__dict__.get("_fingerprint")
        if digest is None:
            starts_small = self.plan(0).starts_small
            digest = self._fingerprint = fingerprint(self.inputs, self.config, self.geometry, starts_small)
        return digest

    def state(self, epoch: int | None = None, next_batch: int | None = None) -> dict[str, Any]:
        """A small JSON-able checkpoint of the loader's place: by default where iterating it has got to.

        Batches are a pure function of (seed, epoch, batch index), so this is all a restarted job needs:
        ``Loader(same data, same knobs).restore(state)`` goes on with exactly the batches that would have come.
        """
        here = self._position
        place = Position(here.epoch if epoch is None else epoch, here.next_batch if next_batch is None else next_batch)
        return make_state(self.fingerprint, place)

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to the place ``state`` records; raises :class:`InputError` if it is another loader's."""
        self.set_epoch(*check_state(state, self.fingerprint, self._n_batches))

    def next_epoch(self) -> None:
        """``set_epoch(epoch + 1)``."""
        self.set_epoch(self._position.epoch + 1)

    def start_pass(self) -> int:
        """The epoch a pass over a whole epoch serves (an iteration of an ``as_dataset`` dataset): the current
        one when none of its batches was handed out yet, else the next one, moved to. :meth:`blocks` and
        :meth:`batches` of the current epoch then move ``next_batch`` as they hand batches out."""
        if self._position.next_batch > 0:
            self.next_epoch()
        return self._position.epoch

    def _handed(self, epoch: int, next_batch: int) -> None:
        """Batches of ``epoch`` before ``next_batch`` were handed out: the position moves past them, when
        ``epoch`` is the current one."""
        if self._position.epoch == epoch:
            self._position = Position(epoch, max(next_batch, self._position.next_batch))

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one)."""
        return self._live().plan(self._position.epoch if epoch is None else epoch)

    def batch(self, index: int, epoch: int | None = None) -> Any:
        """Batch ``index`` of ``epoch`` as numpy arrays: ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.

        With ``transform=``, the transformed batch; asked in order (``i`` after ``i - 1``), the next few
        batches are transformed ahead on ``daskfeed-transform-N`` threads.
        """
        epoch = self._position.epoch if epoch is None else epoch
        plan = self.plan(epoch)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InputTypeError(f"batch index must be an int, got {type(index).__name__}")
        if index < 0:
            index += plan.n_batches
        if self.options.transform is None:
            return self.inputs.pack(self._fill(plan, int(index), int(index) + 1))
        plan.batch_span(int(index))  # an IndexError here, not on a thread
        return self._live().ahead.get(int(epoch), int(index), plan.n_batches)

    def _batch(self, index: int, epoch: int) -> Any:
        """Batch ``index`` of ``epoch``, transformed."""
        plan = self.plan(epoch)
        return self._transform(self.inputs.pack(self._fill(plan, index, index + 1)), epoch, index)

    def _transform(self, batch: Any, epoch: int, index: int) -> Any:
        transform = self.options.transform
        if transform is None:
            return batch
        rng = transform_rng(self.options.seed, self.options.shard.index, epoch, index)
        try:
            return apply_transform(transform, self.inputs.pack, self.inputs.structure, batch, rng, epoch, index)
        except DaskfeedError as err:
            self._keep(err)
            raise

    def __iter__(self) -> Iterator[Any]:
        """The batches of the current epoch in order, then :meth:`set_epoch` to the next one.

        A thread of its own (``daskfeed-batches-N``) assembles up to :attr:`BATCHES_AHEAD` batches ahead, so
        cutting batches overlaps the caller's training step; it ends with the loop, or when the loop is left.
        Batches cut in one run are views of one array each (never of the loader's windows).
        A loop left early keeps its place: the next loop goes on from the batch after the last one it served
        (:meth:`state` and :meth:`restore` carry that place across processes). One loop at a time: a second
        loop while one runs (in another thread, or nested) raises :class:`daskfeed.DaskfeedError`.
        """
        with _ITERATING:
            if self._iterating:
                raise DaskfeedError(
                    "this loader is already being iterated (by another thread, or a loop not yet finished); two "
                    "loops over one loader would each serve the whole epoch. Share one loop, ask batches with "
                    "loader.batch(i) from several threads (each index once per epoch), or give each consumer a "
                    "loader of its own (shard=(i, n) splits the epoch between them)"
                )
            self._iterating = True
        try:
            yield from self._iterate()
        finally:
            self._iterating = False

    def _iterate(self) -> Iterator[Any]:
        epoch, first = self._position
        plan, per = self.plan(epoch), self.BATCHES_PER_RUN

        def run(i: int) -> list[Any]:
            lo = first + i * per
            hi = min(lo + per, self._n_batches)
            arrays, base = self._fill(plan, lo, hi), plan.batch_span(lo)[0]
            spans = [plan.batch_span(b) for b in range(lo, hi)]
            return [
                self._transform(self.inputs.pack([a[start - base : stop - base] for a in arrays]), epoch, b)
                for b, (start, stop) in zip(range(lo, hi), spans)
            ]

        try:
            for batches in _ahead(run, -(-(self._n_batches - first) // per), self.BATCHES_AHEAD // per):
                for batch in batches:
                    if self._closed:  # batches made ahead are not served once the loader is closed
                        raise DaskfeedError("this loader was closed while it was being iterated")
                    self._position = Position(epoch, self._position.next_batch + 1)
                    yield batch
        finally:
            self._forget(epoch)
        self.set_epoch(epoch + 1)

    def batches(self, epoch: int) -> Iterator[Any]:
        """Every batch of ``epoch`` in order (transformed, with ``transform=``), made ahead on a
        ``daskfeed-batches-N`` thread; the epoch's windows are let go at the end. Does not move the epoch; the
        position's ``next_batch`` follows the batches handed out when ``epoch`` is the current one."""
        plan, per = self.plan(epoch), self.BATCHES_PER_RUN
        n = plan.n_batches

        def run(i: int) -> list[Any]:
            lo, hi = i * per, min((i + 1) * per, n)
            arrays, base = self._fill(plan, lo, hi), plan.batch_span(lo)[0]
            return [
                self._transform(self.inputs.pack([a[s - base : t - base] for a in arrays]), epoch, b)
                for b in range(lo, hi)
                for s, t in (plan.batch_span(b),)
            ]

        served = 0
        try:
            for made in _ahead(run, -(-n // per), self.BATCHES_AHEAD // per):
                for batch in made:
                    served += 1
                    self._handed(epoch, served)
                    yield batch
        finally:
            self._forget(epoch)

    def blocks(self, epoch: int, batches_per_block: int) -> Iterator[Any]:
        """The epoch as runs of ``batches_per_block`` whole batches, each run one array per leaf.

        Cutting the runs with ``tf.data.Dataset.rebatch(batch_size)`` gives exactly :meth:`batch` ``(i)``. Does
        not move the epoch; the position's ``next_batch`` follows the blocks handed out when ``epoch`` is the
        current one.
        """
        plan = self.plan(epoch)
        n = plan.n_batches
        try:
            for first in range(0, n, batches_per_block):
                last = min(first + batches_per_block, n)
                block = self.inputs.pack(self._fill(plan, first, last))
                self._handed(epoch, last)
                yield block
        finally:
            self._forget(epoch)

    def close(self) -> None:
        """Stop prefetching, cancel pending work (reads waiting on a cluster too) and free the windows, at
        once: a read in progress is abandoned, not waited for. Idempotent.

        A closed loader serves no more batches: asking for one raises :class:`daskfeed.DaskfeedError`.
        """
        self._closed = True
        Interrupts.closed(self)
        self._scheduler.close()
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.finalizer.detach()
            runtime.ahead.close()
            runtime.cache.close()
            self._final_stats = runtime.cache.stats.as_dict()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_runtime"] = None  # threads, locks and windows stay behind; rebuilt on first use
        state["_iterating"] = False  # a loop in this process is not one in the copy
        return state

    def __repr__(self) -> str:
        names = ", ".join(leaf.name for leaf in self.inputs.leaves)
        return (
            f"<daskfeed.Loader {names}: {self.n_samples} samples, batch_size={self.batch_size}, "
            f"{self._n_batches} batches/epoch, epoch={self._position.epoch}, {self.layout.describe()}, "
            f"memory_budget={_format(self.memory_budget)}>"
        )

    # -- machinery ------------------------------------------------------------------------------------

    @property
    def _series(self) -> bool:
        """Whether samples are windows of a series (``window`` names axis 0): a rewrite must keep its order."""
        return self.geometry is not None and self.geometry.series

    def _advice(self) -> str:
        """What fixes a layout that decodes too much: a rewrite in random order, unless the labels are mixed
        already; then the reads are only those a window needs to hold a read unit (more budget, or smaller
        chunks, make them one)."""
        layout = self.layout
        if not layout.labels_mixed:
            return rewrite_hint(self.inputs, self._series)
        grouping = ", ".join(f"{name} {value:.2f}" for name, value in layout.label_grouping.items())
        longest = int(np.diff(layout.chunk_bounds)[layout.shard_chunks].max())
        need = layout.held_bytes + (self.memory_budget - layout.held_bytes) * (longest + self.batch_size)
        need = -(-need // max(1, layout.window_samples))
        unit = next(u for u in (2**40, 2**30, 2**20, 2**10, 1) if need >= 0.9 * u or u == 1)
        need = -(-need // unit) * unit  # a whole kiB, MiB, ...: the size said is the size that works
        return (
            f"The labels are mixed already (grouping {grouping}; 0 is a random order), so no rewrite in random "
            f"order is needed: the reads are those a window needs to hold a chunk of {longest} samples. A "
            f"memory_budget of {_format(need)} or more reads each chunk once; or store smaller chunks."
        )

    def _live(self) -> _Runtime:
        if self._closed:
            raise DaskfeedError("this loader is closed; make a new one to read more batches")
        runtime = self._runtime
        if runtime is None or runtime.pid != os.getpid():  # first use, after unpickling, or in a forked child
            runtime = _Runtime(self)
            runtime.finalizer = weakref.finalize(self, _shut, runtime.cache, self._scheduler, runtime.ahead)
            self._runtime = runtime
        return runtime

    def _fill(self, plan: EpochPlan, first: int, last: int) -> list[np.ndarray]:
        try:
            return self._live().cache.take(plan, first, last, self.served)
        except DaskfeedError as err:
            self._keep(err)
            raise

    def _keep(self, err: DaskfeedError) -> None:
        """Note the first error that stopped a batch (see :attr:`error`)."""
        if self._error is None:
            self._error = err

    def _forget(self, epoch: int) -> None:
        runtime = self._runtime
        if runtime is not None:
            runtime.cache.forget_epoch(epoch)


def _labels(inputs: Inputs) -> Callable[[np.ndarray], dict[str, float]] | None:
    """How ``reads_per_chunk="auto"`` measures the labels' grouping at the read units: every ``y`` leaf, when
    each holds one integer or bool per sample and is in memory or read straight from zarr within
    :data:`daskfeed.mixing.LABEL_WHOLE_BYTES` (the measure reads a label array that size whole, or up to 64 of
    its chunks). None when there is no ``y`` or a target that is not class labels (a regression's floats):
    the layout then trusts only the store's ``daskfeed ingest --shuffle`` mark."""
    targets = [leaf for leaf in inputs.leaves if leaf.role == "y"]
    if not targets or not all(looks_like_labels(leaf.dtype, leaf.sample_shape) for leaf in targets):
        return None
    arrays = {leaf.name: zarr_behind(leaf.array) if leaf.lazy else leaf.array for leaf in targets}
    if any(array is None for array in arrays.values()):  # a dask computation: reading it may cost anything
        return None

    def measure(bounds: np.ndarray) -> dict[str, float]:
        found = {}
        for name, array in arrays.items():
            try:
                value = label_grouping(array, bounds, max_bytes=LABEL_WHOLE_BYTES)
            except Exception:  # a damaged store: the first window that reads it names the chunk
                return {}
            if value is None:  # not class labels after all (too many values), or too costly to read
                return {}
            found[name] = value
        return found

    return measure


def _shut(cache: WindowCache, scheduler: GraphRunner, ahead: Ahead) -> None:
    ahead.close()
    scheduler.close()
    cache.close()


def _ahead(batch: Callable[[int], Any], count: int, ahead: int) -> Iterator[Any]:
    """``batch(0)`` ... ``batch(count - 1)``, made up to ``ahead`` ahead on a ``daskfeed-batches-N`` thread."""
    made: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for i in range(count):
                made.put(("batch", batch(i)))
                if stop.is_set():
                    return
            made.put(("end", None))
        except BaseException as err:  # re-raised in the consumer
            made.put(("error", err))

    thread = threading.Thread(target=produce, name=f"daskfeed-batches-{next(_iter_ids)}", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = made.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                made.get(timeout=0.05)
        thread.join()


def _format(n: int) -> str:
    from dask.utils import format_bytes

    return format_bytes(n)

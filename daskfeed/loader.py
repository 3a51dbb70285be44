"""The framework-free core: plan + prefetch -> numpy batches, with epochs, stats and close()."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import DaskfeedError, InputError, InputTypeError, MemoryBudgetError
from daskfeed.inputs import Inputs, normalize_inputs, written_shuffled, zarr_behind
from daskfeed.plan import SLOTS, EpochPlan, Layout, PlanConfig, choose_layout, format_bytes
from daskfeed.prefetch import BlockSource, Scheduler, Window, WorkerPool, build_window, storage_rows

__all__ = ["DEFAULT_MEMORY_BUDGET", "Loader", "parse_bytes"]

#: 1 GiB: small enough for a laptop, large enough that a window holds dozens of typical chunks.
DEFAULT_MEMORY_BUDGET = 2**30

_iter_ids = itertools.count()

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
}


def parse_bytes(value: int | str, name: str = "memory_budget") -> int:
    """``"512MB"`` -> ``512_000_000``; ``"1GiB"`` -> ``1_073_741_824``; ints pass through.

    Examples
    --------
    >>> parse_bytes("512MB"), parse_bytes("1.5 GiB"), parse_bytes(4096)
    (512000000, 1610612736, 4096)
    """
    if isinstance(value, bool) or not isinstance(value, (int, str, np.integer)):
        raise MemoryBudgetError(
            f"{name} must be a number of bytes or a string like '512MB', got {type(value).__name__} {value!r}"
        )
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not match or match.group(2).lower() not in _UNITS:
            raise MemoryBudgetError(
                f"{name}={value!r} is not a size; expected bytes as an int or a string like '512MB' or '2GiB'"
            )
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise MemoryBudgetError(f"{name} must be positive, got {value}")
    return int(value)


@dataclass(eq=False)
class _Entry:
    """A window that holds one of the loader's slots: being computed, ready, or being served."""

    future: Future
    plan: EpochPlan
    pins: int = 0
    served: set[int] = field(default_factory=set)
    last_use: int = 0


class _State:
    """What a loader holds at run time and drops when pickled or closed: lock, pool, windows, plans."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.pool = WorkerPool(max_threads=SLOTS - 1)
        self.entries: dict[tuple[int, int], _Entry] = {}
        self.released: set[tuple[int, int]] = set()
        self.horizon: dict[int, int] = {}
        self.plans: dict[int, EpochPlan] = {}
        self.tick = 0
        self.closed = False
        self.sources: list[BlockSource | None] | None = None
        #: Storage of windows let go, kept for the next window; with the live windows, at most SLOTS.
        self.spare: list[list[np.ndarray]] = []
        self.stats = _zero_stats()


def _written_shuffled(inputs: Inputs) -> bool:
    """True when every lazy array is a zarr array that ``daskfeed ingest --shuffle`` wrote in random order."""
    lazy = [leaf for leaf in inputs.leaves if leaf.lazy]
    if not lazy:
        return False
    arrays = [zarr_behind(leaf.array) for leaf in lazy]
    return all(array is not None and written_shuffled(array.attrs) for array in arrays)


def _zero_stats() -> dict[str, float]:
    return {
        "windows_computed": 0,
        "batches": 0,
        "samples": 0,
        "wait_s": 0.0,
        "compute_s": 0.0,
        "peak_window_bytes": 0,
        "stalls": 0,
    }


def _shutdown(state: _State) -> None:
    with state.cond:
        state.closed = True
        entries, state.entries = list(state.entries.values()), {}
        state.spare = []
        state.cond.notify_all()
    for entry in entries:
        entry.future.cancel()
    state.pool.close(wait=threading.current_thread().name.startswith("daskfeed-") is False)


class Loader:
    """Shuffled batches of numpy arrays from chunked arrays, computed ahead within a memory budget.

    This is the framework-free core behind :func:`daskfeed.as_sequence` and :func:`daskfeed.as_dataset`;
    see those for the parameters. Batch ``i`` of epoch ``e`` is a pure function of the data, the seed and
    the knobs, whatever order batches are asked for in and from however many threads.

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x = np.arange(10).reshape(10, 1)
    >>> with daskfeed.Loader(x, x[:, 0] * 2, batch_size=4, shuffle=False) as loader:
    ...     [b[1].tolist() for b in loader]
    [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    """

    #: Batches that iterating over a loader assembles ahead of the caller (outside the memory budget).
    BATCHES_AHEAD = 4

    def __init__(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        reads_per_chunk: int | str = "auto",
        scheduler: Any = None,
        shard: tuple[int, int] | None = None,
    ):
        _check_int("batch_size", batch_size, 1)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise InputTypeError(f"shuffle must be True or False, got {shuffle!r}")
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise InputTypeError(f"drop_remainder must be True or False, got {drop_remainder!r}")
        if seed is None:
            seed = secrets.randbits(63)
        _check_int("seed", seed, 0)
        if reads_per_chunk != "auto":
            _check_int("reads_per_chunk", reads_per_chunk, 1, also="or 'auto'")
        if shard is not None:
            if not (
                isinstance(shard, tuple)
                and len(shard) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
            ):
                raise InputTypeError(f"shard must be a tuple (index, count) of two ints, got {shard!r}")
            if not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
                raise InputError(f"shard=(index, count) needs 0 <= index < count, got {shard!r}")
        budget = parse_bytes(memory_budget)
        self.inputs: Inputs = normalize_inputs(x, y, sample_weight)
        bounds = self.inputs.chunk_bounds
        #: Bytes one sample takes in a window: every array's row plus its place in the serving order.
        self.bytes_per_sample = self.inputs.bytes_per_sample + (np.dtype(np.intp).itemsize if shuffle else 0)
        shard_t = (0, 1) if shard is None else (int(shard[0]), int(shard[1]))
        self.layout: Layout = choose_layout(
            np.diff(bounds),
            bytes_per_sample=self.bytes_per_sample,
            batch_size=int(batch_size),
            memory_budget=budget,
            reads_per_chunk=reads_per_chunk,
            shuffle=bool(shuffle),
            mixed=_written_shuffled(self.inputs),
        )
        self.config = PlanConfig(
            chunk_bounds=bounds,
            batch_size=int(batch_size),
            seed=int(seed),
            shuffle=bool(shuffle),
            drop_remainder=bool(drop_remainder),
            reads_per_chunk=self.layout.reads_per_chunk,
            window_samples=self.layout.window_samples,
            shard=shard_t,
        )
        self.memory_budget = budget
        self.scheduler = scheduler
        self._scheduler = Scheduler(scheduler)
        self.epoch = 0
        first = EpochPlan(self.config, 0)
        if first.n_batches == 0:
            raise InputError(
                f"drop_remainder=True with batch_size={batch_size} leaves no batch: this shard has only "
                f"{first.n_samples} samples"
            )
        self._n_batches = first.n_batches
        self._warned = False
        self._state_obj: _State | None = None
        self._final_stats: dict | None = None

    # -- public surface -------------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def reads_per_chunk(self) -> int:
        return self.config.reads_per_chunk

    @property
    def num_batches(self) -> int:
        """Batches per epoch; the same every epoch."""
        return self._n_batches

    def __len__(self) -> int:
        return self._n_batches

    @property
    def stats(self) -> dict[str, float]:
        """Counters since creation: windows computed, batches and samples served, seconds the consumer waited
        and the windows took to compute, the most bytes of windows held at once (``peak_window_bytes``), and
        ``stalls``: how often a batch found its window not yet computed. A training step slower than the
        loader stalls once an epoch at most (on the first window), or not at all once the next epoch's first
        window is prefetched."""
        state = self._state_obj
        if state is not None:
            with state.cond:
                return dict(state.stats)
        return dict(self._final_stats) if self._final_stats is not None else _zero_stats()

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        state = self._state()
        with state.cond:
            plan = state.plans.get(epoch)
            if plan is None:
                plan = EpochPlan(self.config, epoch)
                # Plans are O(read units); keep the few epochs that may be in use at once.
                if len(state.plans) >= 4:
                    state.plans.pop(min(state.plans))
                state.plans[epoch] = plan
            return plan

    def batch(self, index: int, epoch: int | None = None) -> Any:
        """Batch ``index`` of ``epoch`` as numpy arrays: ``x``, ``(x, y)`` or ``(x, y, sample_weight)``."""
        plan = self.plan(epoch)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InputTypeError(f"batch index must be an int, got {type(index).__name__}")
        if index < 0:
            index += plan.n_batches
        return self.inputs.pack(self._fill(plan, int(index), int(index) + 1))

    def __iter__(self) -> Iterator[Any]:
        """The batches of the current epoch in order, then move to the next epoch.

        A thread of its own (``daskfeed-batches-N``) assembles up to :attr:`BATCHES_AHEAD` batches ahead, so
        cutting batches overlaps the caller's training step; it ends with the loop, or when the loop is left.
        """
        epoch = self.epoch
        ahead: queue.Queue = queue.Queue(maxsize=self.BATCHES_AHEAD)
        stop = threading.Event()

        def produce() -> None:
            try:
                for i in range(self._n_batches):
                    ahead.put(("batch", self.batch(i, epoch)))
                    if stop.is_set():
                        return
                ahead.put(("end", None))
            except BaseException as err:  # re-raised in the consumer
                ahead.put(("error", err))

        thread = threading.Thread(target=produce, name=f"daskfeed-batches-{next(_iter_ids)}", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = ahead.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    ahead.get(timeout=0.05)
            thread.join()
            self._forget_epoch(epoch)
        self.epoch = epoch + 1

    def blocks(self, epoch: int, batches_per_block: int) -> Iterator[Any]:
        """The epoch as runs of ``batches_per_block`` whole batches, each run one array per leaf.

        Cutting the runs with ``tf.data.Dataset.rebatch(batch_size)`` gives exactly :meth:`batch` ``(i)``.
        """
        plan = self.plan(epoch)
        n = plan.n_batches
        try:
            for first in range(0, n, batches_per_block):
                yield self.inputs.pack(self._fill(plan, first, min(first + batches_per_block, n)))
        finally:
            self._forget_epoch(epoch)

    def next_epoch(self) -> None:
        """Move to the next epoch: a new order; windows of the old one are let go."""
        old = self.epoch
        self.epoch = old + 1
        self._forget_epoch(old)

    def close(self) -> None:
        """Stop prefetching, cancel pending work, join the threads and free the windows. Idempotent."""
        state, self._state_obj = self._state_obj, None
        if state is not None:
            state.finalizer.detach()
            _shutdown(state)
            self._final_stats = dict(state.stats)  # counted to the end: running windows were joined

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_state_obj"] = None  # threads, locks and windows stay behind; rebuilt on first use
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        names = ", ".join(leaf.name for leaf in self.inputs.leaves)
        return (
            f"<daskfeed.Loader {names}: {self.inputs.n_samples} samples in {len(self.inputs.chunk_bounds) - 1} "
            f"chunks, batch_size={self.batch_size}, {self._n_batches} batches/epoch, epoch={self.epoch}, "
            f"reads_per_chunk={self.reads_per_chunk}, window<={self.config.window_samples} samples, "
            f"memory_budget={format_bytes(self.memory_budget)}>"
        )

    # -- machinery ------------------------------------------------------------------------------------

    def _state(self) -> _State:
        state = self._state_obj
        if state is None or state.pid != os.getpid():  # first use, after unpickling, or in a forked child
            state = _State()
            state.finalizer = weakref.finalize(self, _shutdown, state)
            self._state_obj = state
        return state

    def _fill(self, plan: EpochPlan, first: int, last: int) -> list[np.ndarray]:
        """Batches ``first`` to ``last - 1`` of ``plan`` as one array per leaf, a window at a time.

        A window is pinned only while its rows are copied, and a batch never waits for a window while it
        holds another, so concurrent callers cannot deadlock over the slots.
        """
        start, stop = plan.batch_span(first)[0], plan.batch_span(last - 1)[1]
        out = [np.empty((stop - start, *leaf.sample_shape), leaf.dtype) for leaf in self.inputs.leaves]
        waited = 0.0
        for w in plan.windows_of(start, stop):
            entry = self._acquire(plan, w)
            served = None
            try:
                began = time.perf_counter()
                window: Window = entry.future.result()
                waited += time.perf_counter() - began
                base = int(plan.window_offsets[w])
                lo, hi = max(start, base), min(stop, int(plan.window_offsets[w + 1]))
                rows, dest = slice(lo - base, hi - base), slice(lo - start, hi - start)
                if window.order is None:
                    for buf, o in zip(window.buffers, out):
                        o[dest] = buf[rows]
                else:
                    take = window.order[rows]
                    for buf, o in zip(window.buffers, out):
                        np.take(buf, take, axis=0, out=o[dest])
                batches = plan.batches_of(w)
                served = range(max(first, batches.start), min(last, batches.stop))
            finally:
                self._release(plan, w, entry, served)
        state = self._state()
        with state.cond:
            state.stats["batches"] += last - first
            state.stats["samples"] += stop - start
            state.stats["wait_s"] += waited
        return out

    def _acquire(self, plan: EpochPlan, window: int) -> _Entry:
        """Pin a window, starting it if missing; wait for a free slot when all are taken."""
        state = self._state()
        key = (plan.epoch, window)
        with state.cond:
            while key not in state.entries:
                if state.closed:
                    raise DaskfeedError("the loader was closed while a batch was being read")
                self._make_room(state)
                if len(state.entries) < SLOTS:
                    self._note_order(state, plan.epoch, window)
                    self._start(state, plan, window)
                    break
                state.cond.wait()
            entry = state.entries[key]
            if not entry.future.done():
                state.stats["stalls"] += 1
            entry.pins += 1
            state.tick += 1
            entry.last_use = state.tick
            state.horizon[plan.epoch] = max(state.horizon.get(plan.epoch, -1), window)
            # Prefetch: fill free slots with the windows that come next, without evicting anything. Past the
            # end of the epoch they are the first windows of the next one (its plan is known), so decoding the
            # next epoch overlaps serving the end of this one.
            for ahead_plan, ahead in self._upcoming(plan, window, SLOTS - 1):
                if len(state.entries) >= SLOTS:
                    break
                ahead_key = (ahead_plan.epoch, ahead)
                if ahead_key not in state.entries and ahead_key not in state.released and ahead_plan.batches_of(ahead):
                    self._start(state, ahead_plan, ahead)
        return entry

    def _upcoming(self, plan: EpochPlan, window: int, count: int) -> Iterator[tuple[EpochPlan, int]]:
        """Up to ``count`` windows after ``window`` in serving order, running on into the next epoch only."""
        last_epoch = plan.epoch + 1
        for _ in range(count):
            window += 1
            if window >= plan.n_windows:
                if plan.epoch == last_epoch:
                    return
                plan, window = self.plan(plan.epoch + 1), 0
            yield plan, window

    def _start(self, state: _State, plan: EpochPlan, window: int) -> None:
        future = state.pool.submit(self._compute, state, plan, window)
        state.entries[(plan.epoch, window)] = _Entry(future, plan)
        future.add_done_callback(lambda _f: _notify(state))

    def _compute(self, state: _State, plan: EpochPlan, window: int) -> Window:
        size = plan.window_size(window)
        with state.cond:
            if state.sources is None:
                state.sources = [BlockSource(leaf.array) if leaf.lazy else None for leaf in self.inputs.leaves]
            sources = state.sources
            storage = next((s for s in state.spare if storage_rows(s) >= size), None)
            if storage is not None:
                state.spare.remove(storage)
        result = build_window(self.inputs, sources, plan, window, self._scheduler, storage)
        with state.cond:
            state.stats["windows_computed"] += 1
            state.stats["compute_s"] += result.seconds
            held = result.nbytes + sum(sum(b.nbytes for b in s) for s in state.spare)
            held += sum(
                e.future.result().nbytes
                for e in state.entries.values()
                if e.future.done() and not e.future.cancelled() and e.future.exception() is None
            )
            state.stats["peak_window_bytes"] = max(state.stats["peak_window_bytes"], held)
        return result

    def _drop(self, state: _State, key: tuple[int, int]) -> None:
        """Let a window go (the caller holds the lock and no one pins it); keep its storage if a slot is free."""
        entry = state.entries.pop(key)
        future = entry.future
        ready = future.done() and not future.cancelled() and future.exception() is None
        if ready and len(state.spare) + len(state.entries) < SLOTS:
            state.spare.append(future.result().storage)
        state.cond.notify_all()

    def _make_room(self, state: _State) -> None:
        """With every slot taken, evict one ready, unpinned window (another epoch's first, then the least
        recently used), and drop spare storage that a new window's slot needs."""
        if len(state.entries) >= SLOTS:
            candidates = [
                (key[0] == self.epoch, entry.last_use, key)
                for key, entry in state.entries.items()
                if entry.pins == 0 and entry.future.done()
            ]
            if candidates:
                self._drop(state, min(candidates)[2])
        while state.spare and len(state.spare) + len(state.entries) >= SLOTS:
            state.spare.pop(0)

    def _release(self, plan: EpochPlan, window: int, entry: _Entry, served: range | None) -> None:
        """Unpin ``window``; once every batch that takes from it has been served, let it go."""
        state = self._state()
        key = (plan.epoch, window)
        with state.cond:
            entry.pins -= 1
            current = state.entries.get(key) is entry
            if entry.future.done() and entry.future.exception() is not None:
                # A failed window gives its slot back; asking again computes it again.
                if current:
                    self._drop(state, key)
            elif served is not None:
                entry.served.update(served)
                if entry.pins == 0 and len(entry.served) >= len(plan.batches_of(window)):
                    if current:
                        self._drop(state, key)
                    state.released.add(key)
            state.cond.notify_all()

    def _note_order(self, state: _State, epoch: int, window: int) -> None:
        """Warn once when batches are asked out of plan order (it costs windows computed again).

        Asking for the first window again starts a new pass over the epoch (Keras reads batches 0 and 1 to
        learn their spec, then the whole epoch), which is in order.
        """
        if window == 0:
            state.released = {k for k in state.released if k[0] != epoch}
            state.horizon.pop(epoch, None)
        if self._warned:
            return
        if (epoch, window) in state.released or window > state.horizon.get(epoch, -1) + SLOTS:
            self._warned = True
            warnings.warn(
                "batches are being asked for out of order (Keras fit(shuffle=True) does this), so daskfeed "
                "computes some windows more than once. daskfeed already shuffles samples across chunks: "
                "pass shuffle=False to model.fit for the fast path.",
                UserWarning,
                stacklevel=6,
            )

    def _forget_epoch(self, epoch: int) -> None:
        state = self._state_obj
        if state is None:
            return
        with state.cond:
            for key in [k for k in state.entries if k[0] == epoch]:
                entry = state.entries[key]
                if entry.pins == 0 and (entry.future.cancel() or entry.future.done()):
                    self._drop(state, key)
            state.released = {k for k in state.released if k[0] != epoch}
            state.horizon.pop(epoch, None)
            state.cond.notify_all()


def _notify(state: _State) -> None:
    with state.cond:
        state.cond.notify_all()


def _check_int(name: str, value: Any, minimum: int, also: str = "") -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int >= {minimum}{' ' + also if also else ''}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}{' ' + also if also else ''}, got {value}")

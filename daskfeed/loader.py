"""The framework-free core: plan + prefetch -> numpy batches, with epochs, stats and close()."""

from __future__ import annotations

import os
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
from daskfeed.inputs import Inputs, normalize_inputs
from daskfeed.plan import SLOTS, EpochPlan, Layout, PlanConfig, choose_layout, format_bytes
from daskfeed.prefetch import BlockSource, Window, WorkerPool, build_window, is_shared_memory

__all__ = ["DEFAULT_MEMORY_BUDGET", "Loader", "parse_bytes"]

#: 1 GiB: small enough for a laptop, large enough that a window holds dozens of typical chunks.
DEFAULT_MEMORY_BUDGET = 2**30

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
        self.stats = {
            "windows_computed": 0,
            "batches": 0,
            "samples": 0,
            "wait_s": 0.0,
            "compute_s": 0.0,
            "peak_window_bytes": 0,
        }


def _shutdown(state: _State) -> None:
    with state.cond:
        state.closed = True
        entries, state.entries = list(state.entries.values()), {}
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
        n_chunks = len(bounds) - 1
        if shard_t[1] > n_chunks:
            raise InputError(
                f"shard={shard!r} asks for {shard_t[1]} shards but the arrays have only {n_chunks} chunks on "
                "the sample axis; shards are made of whole chunks, so use at most that many."
            )
        self.layout: Layout = choose_layout(
            np.diff(bounds),
            bytes_per_sample=self.bytes_per_sample,
            batch_size=int(batch_size),
            memory_budget=budget,
            reads_per_chunk=reads_per_chunk,
            shuffle=bool(shuffle),
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
        self._shared_memory = is_shared_memory(scheduler)
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
        and the windows took to compute, and the most bytes of windows held at once (``peak_window_bytes``)."""
        state = self._state_obj
        return dict(state.stats) if state is not None else dict(_State().stats)

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
        start, stop = plan.batch_span(int(index))
        out = [np.empty((stop - start, *leaf.sample_shape), leaf.dtype) for leaf in self.inputs.leaves]
        self._fill(plan, int(index), out)
        return self.inputs.pack(out)

    def __iter__(self) -> Iterator[Any]:
        """The batches of the current epoch in order, then move to the next epoch."""
        epoch = self.epoch
        try:
            for i in range(self._n_batches):
                yield self.batch(i, epoch)
        finally:
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
                last = min(first + batches_per_block, n)
                start, stop = plan.batch_span(first)[0], plan.batch_span(last - 1)[1]
                out = [np.empty((stop - start, *leaf.sample_shape), leaf.dtype) for leaf in self.inputs.leaves]
                for i in range(first, last):
                    a, b = plan.batch_span(i)
                    self._fill(plan, i, [o[a - start : b - start] for o in out])
                yield self.inputs.pack(out)
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

    def _fill(self, plan: EpochPlan, index: int, out: list[np.ndarray]) -> None:
        """Write batch ``index`` of ``plan`` into ``out``, one array per leaf."""
        start, stop = plan.batch_span(index)
        windows = plan.windows_of(start, stop)
        entries = self._acquire(plan, windows)
        try:
            state = self._state()
            for w, entry in zip(windows, entries):
                waited = time.perf_counter()
                window: Window = entry.future.result()
                state.stats["wait_s"] += time.perf_counter() - waited
                base = int(plan.window_offsets[w])
                lo, hi = max(start, base), min(stop, int(plan.window_offsets[w + 1]))
                rows = slice(lo - base, hi - base)
                dest = slice(lo - start, hi - start)
                if window.order is None:
                    for buf, o in zip(window.buffers, out):
                        o[dest] = buf[rows]
                else:
                    take = window.order[rows]
                    for buf, o in zip(window.buffers, out):
                        np.take(buf, take, axis=0, out=o[dest])
        except BaseException:
            self._release(plan, windows, entries, None)
            raise
        self._release(plan, windows, entries, index, stop - start)

    def _acquire(self, plan: EpochPlan, windows: range) -> list[_Entry]:
        """Pin the windows a batch needs, starting the missing ones; wait for free slots, never hold-and-wait."""
        state = self._state()
        epoch = plan.epoch
        with state.cond:
            while True:
                if state.closed:
                    raise DaskfeedError("the loader was closed while a batch was being read")
                missing = [w for w in windows if (epoch, w) not in state.entries]
                self._make_room(state, len(missing), keep={(epoch, w) for w in windows})
                if len(missing) <= SLOTS - len(state.entries):
                    break
                state.cond.wait()
            for w in missing:
                self._note_order(state, epoch, w)
                self._start(state, plan, w)
            entries = []
            for w in windows:
                entry = state.entries[(epoch, w)]
                entry.pins += 1
                state.tick += 1
                entry.last_use = state.tick
                entries.append(entry)
            state.horizon[epoch] = max(state.horizon.get(epoch, -1), windows[-1])
            # Prefetch: fill free slots with the windows that come next, without evicting anything.
            ahead = windows[-1] + 1
            while len(state.entries) < SLOTS and ahead < plan.n_windows:
                key = (epoch, ahead)
                if key not in state.entries and key not in state.released and plan.batches_of(ahead):
                    self._start(state, plan, ahead)
                ahead += 1
                if ahead > windows[-1] + SLOTS:
                    break
        return entries

    def _start(self, state: _State, plan: EpochPlan, window: int) -> None:
        future = state.pool.submit(self._compute, state, plan, window)
        state.entries[(plan.epoch, window)] = _Entry(future, plan)
        future.add_done_callback(lambda _f: _notify(state))

    def _compute(self, state: _State, plan: EpochPlan, window: int) -> Window:
        with state.cond:
            if state.sources is None:
                state.sources = [BlockSource(leaf.array) if leaf.lazy else None for leaf in self.inputs.leaves]
            sources = state.sources
        result = build_window(self.inputs, sources, plan, window, self.scheduler, self._shared_memory)
        with state.cond:
            state.stats["windows_computed"] += 1
            state.stats["compute_s"] += result.seconds
            held = result.nbytes + sum(
                e.future.result().nbytes
                for e in state.entries.values()
                if e.future.done() and not e.future.cancelled() and e.future.exception() is None
            )
            state.stats["peak_window_bytes"] = max(state.stats["peak_window_bytes"], held)
        return result

    def _make_room(self, state: _State, needed: int, keep: set) -> None:
        """Evict ready, unpinned windows (other epochs first, then least recently used) until ``needed`` fit."""
        free = SLOTS - len(state.entries)
        if needed <= free:
            return
        candidates = [
            (key[0] == self.epoch, entry.last_use, key)
            for key, entry in state.entries.items()
            if key not in keep and entry.pins == 0 and entry.future.done()
        ]
        for _, _, key in sorted(candidates)[: needed - free]:
            del state.entries[key]

    def _release(
        self, plan: EpochPlan, windows: range, entries: list[_Entry], index: int | None, samples: int = 0
    ) -> None:
        state = self._state()
        with state.cond:
            if index is not None:
                state.stats["batches"] += 1
                state.stats["samples"] += samples
            for w, entry in zip(windows, entries):
                entry.pins -= 1
                if entry.future.done() and entry.future.exception() is not None:
                    # A failed window gives its slot back; asking again computes it again.
                    if state.entries.get((plan.epoch, w)) is entry:
                        del state.entries[(plan.epoch, w)]
                    continue
                if index is None:
                    continue
                entry.served.add(index)
                if entry.pins == 0 and len(entry.served) >= len(plan.batches_of(w)):
                    if state.entries.get((plan.epoch, w)) is entry:
                        del state.entries[(plan.epoch, w)]
                    state.released.add((plan.epoch, w))
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
                stacklevel=5,
            )

    def _forget_epoch(self, epoch: int) -> None:
        state = self._state_obj
        if state is None:
            return
        with state.cond:
            for key in [k for k in state.entries if k[0] == epoch]:
                entry = state.entries[key]
                if entry.pins == 0 and (entry.future.cancel() or entry.future.done()):
                    del state.entries[key]
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

"""The window cache: the windows a loader holds in its slots, prefetch of the next ones, spare storage, stats."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daskfeed.errors import DaskfeedError, OrderWarning, warn
from daskfeed.interrupts import Interrupts
from daskfeed.layout import SLOTS
from daskfeed.plan import EpochPlan
from daskfeed.read import WorkerPool
from daskfeed.windows import Window, storage_rows

__all__ = ["CacheStats", "OrderWatch", "WindowCache"]

#: A batch waiting for its window checks this often whether the loader was closed.
WAIT_SLICE_S = 0.1
#: Batches start on this boundary (see :func:`aligned_empty`): TensorFlow's own (``EIGEN_MAX_ALIGN_BYTES``).
ALIGN = 64


@dataclass
class CacheStats:
    """Counters since the loader was made."""

    #: Windows whose making decoded data (windows served from memory held whole are not counted).
    windows_computed: int = 0
    batches: int = 0
    samples: int = 0
    #: Seconds the consumer waited for windows, and seconds windows took to make.
    wait_s: float = 0.0
    compute_s: float = 0.0
    #: The most bytes of decoded data held at once: windows, their spare storage and arrays held in memory.
    peak_window_bytes: int = 0
    #: How often a batch found its window not yet made.
    stalls: int = 0
    #: Bytes of chunks decoded.
    bytes_decoded: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(eq=False)
class _Entry:
    """A window that holds one of the slots: being made, ready, or being served."""

    future: Future
    plan: EpochPlan
    pins: int = 0
    served: set[int] = field(default_factory=set)
    last_use: int = 0


class OrderWatch:
    """Warns once when batches are asked out of plan order, which costs windows made again.

    Asking for the first window again starts a new pass over the epoch (Keras reads batches 0 and 1 to learn
    their spec, then the whole epoch), which is in order.
    """

    def __init__(self) -> None:
        self.horizon: dict[int, int] = {}  # the furthest window asked for, per epoch
        self.warned = False

    def note(self, epoch: int, window: int, released: set[tuple[int, int]]) -> None:
        if window == 0:
            self.horizon.pop(epoch, None)
        if not self.warned and ((epoch, window) in released or window > self.horizon.get(epoch, -1) + SLOTS):
            self.warned = True
            warn(
                "batches are being asked for out of order (Keras fit(shuffle=True) does this), so daskfeed "
                "computes some windows more than once. daskfeed already shuffles samples across chunks: "
                "pass shuffle=False to model.fit for the fast path.",
                OrderWarning,
            )

    def reached(self, epoch: int, window: int) -> None:
        self.horizon[epoch] = max(self.horizon.get(epoch, -1), window)

    def forget(self, epoch: int) -> None:
        self.horizon.pop(epoch, None)


class WindowCache:
    """The windows a loader holds: at most :data:`SLOTS` at once, counting spare storage kept for reuse.

    ``make(plan, window, storage)`` makes a window (in a ``daskfeed-prefetch-N`` thread);
    ``plan_of(epoch)`` gives the plan of an epoch, for prefetching into the next one; ``held_nbytes()`` the
    bytes the loader holds outside windows (arrays held whole), for the peak; ``serving()`` the epoch of the
    loader's position, whose windows are evicted last.
    """

    def __init__(
        self,
        make: Callable[[EpochPlan, int, list[np.ndarray] | None], Window],
        plan_of: Callable[[int], EpochPlan],
        held_nbytes: Callable[[], int],
        serving: Callable[[], int],
    ):
        self._make, self._plan_of, self._held_nbytes, self._serving = make, plan_of, held_nbytes, serving
        self.cond = threading.Condition()
        self.pool = WorkerPool(max_threads=SLOTS - 1)
        self.entries: dict[tuple[int, int], _Entry] = {}
        #: Windows whose every batch was served in the current pass of their epoch.
        self.released: set[tuple[int, int]] = set()
        #: Storage of windows let go, kept for the next window; with the live windows, at most SLOTS.
        self.spare: list[list[np.ndarray]] = []
        self.stats = CacheStats()
        self.order = OrderWatch()
        self.tick = 0
        self.closed = False

    # -- serving --------------------------------------------------------------------------------------

    def acquire(self, plan: EpochPlan, window: int) -> _Entry:
        """Pin a window, starting it if missing; wait for a free slot when all are taken (as :meth:`wait`)."""
        key = (plan.epoch, window)
        with self.cond:  # the common case, once per batch: the window is there
            entry = self.entries.get(key)
            if entry is not None:
                return self._pin(entry, plan, window)
        presses = Interrupts.count()
        with Interrupts.waiting(), self.cond:
            while key not in self.entries:
                if self.closed:
                    raise DaskfeedError("the loader was closed while a batch was being read")
                self._make_room()
                if len(self.entries) < SLOTS:
                    if window == 0:  # a new pass over the epoch
                        self.released = {k for k in self.released if k[0] != plan.epoch}
                    self.order.note(plan.epoch, window, self.released)
                    self._start(plan, window)
                    break
                self.cond.wait(WAIT_SLICE_S)
                Interrupts.check(presses)
            return self._pin(self.entries[key], plan, window)

    def _pin(self, entry: _Entry, plan: EpochPlan, window: int) -> _Entry:
        if not entry.future.done():
            self.stats.stalls += 1
        entry.pins += 1
        self.tick += 1
        entry.last_use = self.tick
        self.order.reached(plan.epoch, window)
        self._prefetch(plan, window)
        return entry

    def wait(self, entry: _Entry) -> Window:
        """The window of a pinned entry, once made (its error, if making it failed).

        Waits in short slices, so that :meth:`close` from another thread, Ctrl-C or Python's exit ends the wait
        at once.
        """
        if entry.future.done():  # no wait: nothing to time or interrupt
            Interrupts.serving()
            return entry.future.result()
        began = time.perf_counter()
        presses = Interrupts.count()
        with Interrupts.waiting():
            while True:
                try:
                    window = entry.future.result(timeout=WAIT_SLICE_S)
                    break
                except FutureTimeout:
                    pass
                if self.closed:
                    raise DaskfeedError("the loader was closed while a batch was being read")
                Interrupts.check(presses)
        with self.cond:
            self.stats.wait_s += time.perf_counter() - began
        return window

    def release(self, plan: EpochPlan, window: int, entry: _Entry, served: range | None) -> None:
        """Unpin ``window``; once every batch that takes from it has been served, let it go."""
        key = (plan.epoch, window)
        with self.cond:
            entry.pins -= 1
            current = self.entries.get(key) is entry
            if entry.future.done() and entry.future.exception() is not None:
                if current:  # a failed window gives its slot back; asking again makes it again
                    self._drop(key)
            elif served is not None:
                entry.served.update(served)
                if entry.pins == 0 and len(entry.served) >= len(plan.batches_of(window)):
                    if current:
                        self._drop(key)
                    self.released.add(key)
            self.cond.notify_all()

    def take(self, plan: EpochPlan, first: int, last: int, leaves: Sequence[Any]) -> list[np.ndarray]:
        """Batches ``first`` to ``last - 1`` of ``plan`` as one array per leaf, cut a window at a time.

        ``leaves`` give each leaf's ``sample_shape`` and ``dtype`` as served (a sample cut by ``window=`` has
        the window's shape).

        A window is pinned only while its rows are copied, and a batch never waits for a window while it
        holds another, so concurrent callers cannot deadlock over the slots.
        """
        start, stop = plan.batch_span(first)[0], plan.batch_span(last - 1)[1]
        out = [aligned_empty((stop - start, *leaf.sample_shape), leaf.dtype) for leaf in leaves]
        for w in plan.windows_of(start, stop):
            entry = self.acquire(plan, w)
            served = None
            try:
                window = self.wait(entry)
                base = int(plan.window_offsets[w])
                lo, hi = max(start, base) - base, min(stop, int(plan.window_offsets[w + 1])) - base
                dest = slice(lo + base - start, hi + base - start)
                for array, take, o in zip(window.arrays, window.takes, out):
                    if isinstance(take, slice):
                        o[dest] = array[take.start + lo : take.start + hi]
                    elif isinstance(take, np.ndarray):
                        # mode="clip": the plan's rows are in range, and "raise" gathers into a buffer of its
                        # own first and copies that (2-5x slower for a block of 8,192 rows, 2.7x for a batch)
                        np.take(array, take[lo:hi], axis=0, out=o[dest], mode="clip")
                    else:  # samples cut by window=: gathered from raw rows
                        take.into(array, lo, hi, o[dest])
                batches = plan.batches_of(w)
                served = range(max(first, batches.start), min(last, batches.stop))
            finally:
                self.release(plan, w, entry, served)
        with self.cond:
            self.stats.batches += last - first
            self.stats.samples += stop - start
        return out

    def forget_epoch(self, epoch: int) -> None:
        """Let go of an epoch's windows that nobody pins (and cancel those not started)."""
        with self.cond:
            for key in [k for k in self.entries if k[0] == epoch]:
                entry = self.entries[key]
                if entry.pins == 0 and (entry.future.cancel() or entry.future.done()):
                    self._drop(key)
            self.released = {k for k in self.released if k[0] != epoch}
            self.order.forget(epoch)
            self.cond.notify_all()

    def close(self) -> None:
        """Cancel windows not started and free everything, at once. Idempotent.

        A window being made is abandoned, not waited for: its thread ends when the read it is in returns,
        and the window is dropped; whoever waits for a batch gets :class:`DaskfeedError`.
        """
        with self.cond:
            self.closed = True
            entries, self.entries = list(self.entries.values()), {}
            self.spare = []
            self.cond.notify_all()
        for entry in entries:
            entry.future.cancel()
        self.pool.close(wait=False)

    def live_windows(self) -> int:
        """Windows in slots plus spare storage kept; never more than :data:`SLOTS`."""
        with self.cond:
            return len(self.entries) + len(self.spare)

    # -- machinery (the caller holds the lock) --------------------------------------------------------

    def _upcoming(self, plan: EpochPlan, window: int) -> Iterator[tuple[EpochPlan, int]]:
        """Up to SLOTS - 1 windows after ``window`` in serving order, running on into the next epoch only."""
        last_epoch = plan.epoch + 1
        for _ in range(SLOTS - 1):
            window += 1
            if window >= plan.n_windows:
                if plan.epoch == last_epoch:
                    return
                plan, window = self._plan_of(plan.epoch + 1), 0
            yield plan, window

    def _prefetch(self, plan: EpochPlan, window: int) -> None:
        """Fill free slots with the windows that come next, without evicting anything. Past the end of the
        epoch they are the first windows of the next one, so its decoding overlaps serving this one's end."""
        for ahead_plan, ahead in self._upcoming(plan, window):
            if len(self.entries) >= SLOTS:
                break
            key = (ahead_plan.epoch, ahead)
            if key not in self.entries and key not in self.released and ahead_plan.batches_of(ahead):
                self._start(ahead_plan, ahead)

    def _start(self, plan: EpochPlan, window: int) -> None:
        """Start making a window in a free slot. It takes spare storage that fits now, so that a buffer is
        always either spare or a window's, and drops spare storage the slot needs (spare + live <= SLOTS)."""
        size = plan.window_rows(window)
        # By position, never by value: ``list.remove`` would compare numpy buffers with ``==``.
        fits = next((i for i, s in enumerate(self.spare) if storage_rows(s) >= size), None)
        storage = self.spare.pop(fits) if fits is not None else None
        while self.spare and len(self.spare) + len(self.entries) >= SLOTS:
            self.spare.pop(0)
        future = self.pool.submit(self._run, plan, window, storage, rank=(plan.epoch, window))
        self.entries[(plan.epoch, window)] = _Entry(future, plan)
        future.add_done_callback(lambda _f: self._notify())

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _run(self, plan: EpochPlan, window: int, storage: list[np.ndarray] | None) -> Window:
        made = self._make(plan, window, storage)
        with self.cond:
            self.stats.windows_computed += made.decoded > 0
            self.stats.bytes_decoded += made.decoded
            self.stats.compute_s += made.seconds
            held = made.nbytes + self._held_nbytes() + sum(sum(b.nbytes for b in s) for s in self.spare)
            held += sum(e.future.result().nbytes for e in self.entries.values() if _ready(e.future))
            self.stats.peak_window_bytes = max(self.stats.peak_window_bytes, held)
        return made

    def _drop(self, key: tuple[int, int]) -> None:
        """Let a window go (no one pins it); keep its storage if a slot is free."""
        future = self.entries.pop(key).future
        if _ready(future) and future.result().storage and len(self.spare) + len(self.entries) < SLOTS:
            self.spare.append(future.result().storage)
        self.cond.notify_all()

    def _make_room(self) -> None:
        """With every slot taken, evict one ready, unpinned window (another epoch's first, then the least
        recently used), and drop spare storage that a new window's slot needs."""
        if len(self.entries) >= SLOTS:
            serving = self._serving()
            candidates = [
                (key[0] == serving, entry.last_use, key)
                for key, entry in self.entries.items()
                if entry.pins == 0 and entry.future.done()
            ]
            if candidates:
                self._drop(min(candidates)[2])
        while self.spare and len(self.spare) + len(self.entries) >= SLOTS:
            self.spare.pop(0)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty`` starting on a 64-byte boundary: TensorFlow takes such an array as a tensor without copying it
    (``as_dataset``'s blocks: measured 0.23 ms against 1.3-1.5 ms for a 25 MB block), and copies any other."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:  # no view of raw bytes; TensorFlow copies these anyway
        return np.empty(shape, dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    at = -raw.ctypes.data % ALIGN
    return raw[at : at + nbytes].view(dtype).reshape(shape)


def _ready(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None

"""Where reads run: daskfeed's own worker threads, and the ``scheduler=`` knob resolved once (GraphRunner)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from daskfeed._compat import dask_threaded_get

__all__ = ["DEFAULT_CONCURRENCY", "LAST", "GraphRunner", "Slots", "WorkerPool", "usable_cores"]

_thread_ids = itertools.count()
_job_ids = itertools.count()
#: Requests for chunks of a store that is not local files that a loader keeps in flight, by default.
DEFAULT_CONCURRENCY = 32
#: The rank of work no window waits for first. A read's rank is ``(epoch, window)`` of the window it makes: the
#: pools and the requests in flight serve the lowest rank first, so the window a batch waits for is not held
#: up by the windows read ahead of it (a fresh loader starts three at once).
LAST: tuple = (float("inf"),)


class WorkerPool:
    """A small pool whose threads, named ``daskfeed-prefetch-N``, start on submit and end when idle; jobs of
    the lowest ``rank`` first, then in the order submitted.

    No thread outlives the work it was given, so nothing is left running after an epoch, an early
    ``break`` or an exception in the training step; :meth:`close` cancels what has not started and
    waits for what has.
    """

    def __init__(self, max_threads: int = 2, name: str = "daskfeed-prefetch"):
        self.max_threads = self._max = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._jobs: list[tuple[tuple, int, Future, Callable[..., Any], tuple]] = []  # a heap
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any, rank: tuple = LAST) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a closed daskfeed worker pool")
            heapq.heappush(self._jobs, (rank, next(_job_ids), future, fn, args))
            if len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{next(_thread_ids)}", daemon=True)
                self._threads.add(thread)
                thread.start()
        return future

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                if not self._jobs:
                    self._threads.discard(me)
                    return
                _, _, future, fn, args = heapq.heappop(self._jobs)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # travels to the consumer through the future
                future.set_exception(err)
            # Drop references now, so a finished window lives only as long as the loader holds it.
            del future, fn, args

    def close(self, wait: bool = True) -> None:
        """Cancel jobs not started; with ``wait``, join the threads running the others. Idempotent."""
        with self._lock:
            self._closed = True
            jobs, self._jobs = self._jobs, []
            threads = list(self._threads)
        for _, _, future, _, _ in jobs:
            future.cancel()
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


class Slots:
    """At most ``count`` chunk requests in flight at once, on one event loop (zarr's); a request waiting for a
    place gets it lowest ``rank`` first, then in the order it came (an ``asyncio.Semaphore`` that ranks)."""

    def __init__(self, count: int):
        self._free = count
        self._waiting: list[tuple[tuple, int, asyncio.Future]] = []  # a heap

    @contextlib.asynccontextmanager
    async def held(self, rank: tuple = LAST) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            place = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (rank, next(_job_ids), place))
            try:
                await place  # a request that ends hands its place straight to the first waiting
            except asyncio.CancelledError:
                if place.done() and not place.cancelled():  # handed a place, but cancelled before taking it
                    self._hand_on()
                raise
        try:
            yield
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        while self._waiting:
            place = heapq.heappop(self._waiting)[2]
            if not place.done():  # a cancelled waiter's future is done
                place.set_result(None)
                return
        self._free += 1


class GraphRunner:
    """What ``scheduler=`` names, resolved once: how to compute a task graph, here or on a cluster.

    dask's threaded scheduler runs on threads of daskfeed's own (``daskfeed-read-N``, at most one per core,
    ending when idle), not on dask's process-wide pools: those and the lock that guards them are inherited,
    possibly locked, by a process that Keras forks (``use_multiprocessing=True``), and hang it. A forked child
    makes its own threads.
    """

    def __init__(
        self,
        scheduler: Any,
        no_workers_timeout: float = 60.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        threads: int | None = None,
    ):
        import dask.local
        import dask.threaded
        from dask.base import get_scheduler

        get = get_scheduler(scheduler=scheduler)
        self.client = getattr(get, "__self__", None) if get is not None else None
        if self.client is not None and not hasattr(self.client, "gather"):
            self.client = None
        self._get = dask.threaded.get if get is None else get
        self._threaded = self._get is dask.threaded.get
        #: Whether tasks run in this process and can write into the loader's buffers.
        self.shared_memory = self._threaded or self._get is dask.local.get_sync
        self._pool: WorkerPool | None = None
        self._pid = 0
        self.no_workers_timeout = no_workers_timeout
        self.concurrency = concurrency
        #: Reading threads (chunks decoded at once): one per usable core unless fewer are asked for.
        self.threads = threads
        self._limit = Slots(concurrency)
        #: Set by :meth:`close`: reads waiting on a cluster stop (and cancel their futures) within a slice.
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def _threads(self) -> WorkerPool:
        pool = self._pool
        if pool is None or self._pid != os.getpid():  # first use, or a forked child: threads of its own
            pool = self._pool = WorkerPool(max_threads=self.threads or usable_cores(), name="daskfeed-read")
            self._limit = Slots(self.concurrency)  # a forked child's requests in flight are its own
            self._pid = os.getpid()
        return pool

    def submit(self, fn: Callable[..., Any], *args: Any, rank: tuple = LAST) -> Future:
        """Run ``fn(*args)`` on a ``daskfeed-read`` thread (one per usable core; the lowest ``rank`` first), or
        at once with the synchronous scheduler."""
        if self._threaded:
            return self._threads().submit(fn, *args, rank=rank)
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future

    def in_flight(self) -> Slots:
        """The loader's places for chunk requests in flight (``concurrency``), used on zarr's event loop."""
        self._threads()
        return self._limit

    def get(self, graph: dict, keys: list, rank: tuple = LAST) -> Any:
        if not self._threaded:
            return self._get(graph, keys)
        pool = self._threads()
        return dask_threaded_get(functools.partial(pool.submit, rank=rank), pool.max_threads, graph, keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None  # threads stay behind; a copy in another process makes its own
        state["_limit"] = Slots(self.concurrency)
        state["closed"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.closed = threading.Event()


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, cgroup cpusets), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1

"""The window cache on its own: slots, spare storage, pins, prefetch into the next epoch, failures."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

import daskfeed
from daskfeed import OrderWarning
from daskfeed.cache import ALIGN, WindowCache, aligned_empty
from daskfeed.layout import SLOTS
from daskfeed.plan import EpochPlan, PlanConfig
from daskfeed.windows import Window

N = 1000


def config(**kwargs):
    kwargs.setdefault("seed", 0)
    return PlanConfig(chunk_bounds=np.arange(0, N + 1, 50), batch_size=16, window_samples=120, **kwargs)


class Windows:
    """Makes windows of global sample ids (reusing spare storage when given) and watches the slots."""

    def __init__(self, plan_config, fail=()):
        self.config, self.fail = plan_config, set(fail)
        self.plans = {}
        self.epoch = 0  # the epoch being served, as a loader's position says
        self.cache = WindowCache(self.make, self.plan, lambda: 0, lambda: self.epoch)
        self.made, self.reused, self.most_live = [], 0, 0
        self.lock = threading.Lock()

    def plan(self, epoch):
        return self.plans.setdefault(epoch, EpochPlan(self.config, epoch))

    def make(self, plan, window, storage):
        with self.lock:
            self.made.append((plan.epoch, window))
            self.most_live = max(self.most_live, self.cache.live_windows())
        if (plan.epoch, window) in self.fail:
            raise OSError(f"window {window} is unreadable")
        size = plan.window_size(window)
        if storage is None:
            storage = [np.empty(size + 10, np.int64)]
        else:
            self.reused += 1
        storage[0][:size] = plan.rows(window, self.config.chunk_bounds[:-1])
        order = plan.window_order(window)
        take = slice(0, size) if order is None else order
        nbytes = storage[0].nbytes
        return Window(window, storage, [storage[0][:size]], [take], nbytes, size * 8, 0.0)


LEAF = SimpleNamespace(sample_shape=(), dtype=np.dtype(np.int64))


def epoch(windows, e, order=None):
    plan = windows.plan(e)
    ids = [windows.cache.take(plan, i, i + 1, [LEAF])[0] for i in (order or range(plan.n_batches))]
    windows.cache.forget_epoch(e)
    return np.concatenate(ids)


def test_spare_storage_and_live_windows_never_exceed_the_slots():
    windows = Windows(config())
    for e in range(3):
        windows.epoch = e
        ids = epoch(windows, e)
        np.testing.assert_array_equal(np.sort(ids), np.arange(N))
        assert windows.cache.live_windows() <= SLOTS
    assert windows.most_live <= SLOTS and windows.reused > 0  # storage of windows let go is used again
    plan = windows.plan(0)
    assert windows.cache.stats.batches == 3 * plan.n_batches and windows.cache.stats.samples == 3 * N
    windows.cache.close()


def test_prefetch_runs_into_the_next_epoch_only():
    windows = Windows(config())
    epoch(windows, 0)
    windows.cache.close()
    assert {e for e, _ in windows.made} <= {0, 1}
    assert sorted(w for e, w in windows.made if e == 1) in ([], [0], [0, 1])


def test_any_order_from_many_threads_gives_the_same_batches():
    reference = Windows(config())
    plan = reference.plan(0)
    expected = [reference.cache.take(plan, i, i + 1, [LEAF])[0] for i in range(plan.n_batches)]
    windows = Windows(config())
    order = list(range(plan.n_batches)) * 3
    random.Random(1).shuffle(order)
    with pytest.warns(OrderWarning, match="out of order"), ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: (i, windows.cache.take(windows.plan(0), i, i + 1, [LEAF])[0]), order))
    for i, ids in got:
        np.testing.assert_array_equal(ids, expected[i])
    assert windows.most_live <= SLOTS
    windows.cache.close()
    reference.cache.close()


def test_a_failed_window_gives_its_slot_back_and_fails_again_when_asked_again():
    windows = Windows(config(), fail={(0, 2)})
    plan = windows.plan(0)
    bad = plan.batches_of(2)[1]
    with pytest.raises(OSError, match="window 2 is unreadable"):
        windows.cache.take(plan, bad, bad + 1, [LEAF])
    assert windows.cache.live_windows() <= SLOTS
    with pytest.raises(OSError):
        windows.cache.take(plan, bad, bad + 1, [LEAF])
    assert windows.made.count((0, 2)) == 2
    windows.cache.close()
    from daskfeed import DaskfeedError

    with pytest.raises(DaskfeedError, match="closed"):
        windows.cache.take(plan, 0, 1, [LEAF])


@pytest.mark.parametrize("dtype", ["u1", "f4", "f8", "c16", "M8[s]", [("a", "i2"), ("b", "f8")]])
@pytest.mark.parametrize("shape", [(0, 3), (1,), (7, 5, 3), (1000, 3)])
def test_batches_start_on_a_64_byte_boundary_whatever_their_shape_and_dtype(shape, dtype):
    """TensorFlow takes a 64-byte-aligned array as a tensor without copying it."""
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % ALIGN == 0  # an empty array has no memory to align
    a[...] = np.zeros(shape, dtype)  # the whole array is writable memory of its own
    assert a.nbytes == int(np.prod(shape)) * np.dtype(dtype).itemsize


def test_a_loaders_blocks_are_aligned(tmp_path):
    x = np.arange(1000 * 3, dtype="f4").reshape(1000, 3)
    with daskfeed.Loader(x, np.arange(1000), batch_size=10, seed=0) as loader:
        for xb, yb in loader.blocks(0, 7):
            assert xb.ctypes.data % ALIGN == 0 and yb.ctypes.data % ALIGN == 0

"""Data that fits the budget: epoch 0 served while it is decoded, from windows of chunks all over the array."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from conftest import join_daskfeed_threads, write_store

import daskfeed
from daskfeed.plan import FIRST_WINDOW_CHUNKS
from daskfeed.state import fingerprint

N, CHUNK = 2000, 20  # 100 chunks: at least twice FIRST_WINDOW_CHUNKS, so epoch 0 is served while decoded


class GateStore(zarr.storage.WrapperStore):
    """A real LocalStore whose chunk reads of ``x`` wait until ``gate`` opens, except the chunks in ``allowed``;
    a read of a chunk in ``broken`` fails."""

    def __init__(self, store, shared=None):
        super().__init__(store)
        self.shared = shared if shared is not None else {"allowed": None, "broken": set(), "waiting": set()}
        self.gate = self.shared.setdefault("gate", threading.Event())

    def _with_store(self, store):
        return type(self)(store, self.shared)

    async def get(self, key, prototype, byte_range=None):
        if key.startswith("x/c/"):
            chunk = int(key.split("/")[2])
            if chunk in self.shared["broken"]:
                raise OSError(f"chunk {chunk} is unreadable")
            allowed = self.shared["allowed"]
            if allowed is not None and chunk not in allowed:
                self.shared["waiting"].add(chunk)
                while not self.gate.is_set():
                    await asyncio.sleep(0.01)
        return await self._store.get(key, prototype, byte_range)


@pytest.fixture
def gated(tmp_path):
    """x (N, 4) whose row r holds r, chunked by CHUNK; y = r // 200, sorted (ten classes, a run each)."""
    x = np.repeat(np.arange(N, dtype="f4")[:, None], 4, axis=1)
    path = write_store(tmp_path / "g.zarr", {"x": x, "y": np.arange(N) // 200}, {"x": CHUNK, "y": 500})
    store = GateStore(zarr.storage.LocalStore(path, read_only=True))
    arrays = daskfeed.open_zarr(zarr.open_group(store, mode="r"))
    return store, arrays


def test_the_first_batches_come_while_the_rest_is_decoded_and_epoch_0_is_whole(gated):
    store, arrays = gated
    loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=32, seed=0)
    assert loader.layout.resident
    plan = loader.plan(0)
    assert plan.progressive and plan.n_windows >= 2
    first = plan.read_chunk[plan.reads_of(0)]
    assert len(first) == FIRST_WINDOW_CHUNKS
    assert first.max() - first.min() > N // CHUNK // 2  # drawn from all over the array, not a run of chunks
    store.shared["allowed"] = {int(c) for c in first}
    with ThreadPoolExecutor(1) as pool:  # every chunk of a later window is held back: batch 0 needs window 0 only
        try:
            x, y = pool.submit(loader.batch, 0).result(timeout=60)
        except TimeoutError:
            store.gate.set()
            pytest.fail("batch 0 waited for chunks of later windows")
    assert store.shared["waiting"] and not store.gate.is_set()
    assert np.isin(x[:, 0] // CHUNK, first).all() and np.array_equal(y, x[:, 0].astype(int) // 200)
    assert len(np.unique(y)) >= 6  # a store sorted by label: the first batch mixes classes all the same
    store.gate.set()
    served = np.concatenate([loader.batch(i)[0][:, 0] for i in range(len(loader))]).astype(int)
    assert np.array_equal(np.sort(served), np.arange(N))  # epoch 0 is every sample once
    assert loader.plan(1).n_windows == 1 and not loader.plan(1).progressive  # later epochs: full shuffles
    again = np.concatenate([loader.batch(i, 1)[0][:, 0] for i in range(len(loader))]).astype(int)
    assert np.array_equal(np.sort(again), np.arange(N)) and not np.array_equal(again, served)
    assert loader.stats["bytes_decoded"] == N * 4 * 4 + N * 8  # each chunk decoded once, counted once
    loader.close()


def test_streamed_epoch_0_starts_with_a_small_window_of_chunks_from_all_over_the_array(tmp_path):
    """Data read window by window: epoch 0's first window holds FIRST_WINDOW_CHUNKS chunks, the next ones
    double; batch 0 needs the first window only and mixes the classes of a sorted store."""
    n = 10_000  # 500 chunks of 20; a window of the budget below holds about 100
    x = np.repeat(np.arange(n, dtype="f4")[:, None], 64, axis=1)
    path = write_store(tmp_path / "s.zarr", {"x": x, "y": np.arange(n) // (n // 10)}, {"x": CHUNK, "y": 500})
    store = GateStore(zarr.storage.LocalStore(path, read_only=True))
    arrays = daskfeed.open_zarr(zarr.open_group(store, mode="r"))
    loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=32, seed=0, memory_budget="1.8MB")
    assert not loader.layout.resident and loader.layout.reads_per_chunk == 1
    plan, later = loader.plan(0), loader.plan(1)
    assert plan.starts_small and not later.starts_small
    assert loader.fingerprint != fingerprint(loader.inputs, loader.config)  # a state of full windows is another's
    first = plan.read_chunk[plan.reads_of(0)]
    assert len(first) == FIRST_WINDOW_CHUNKS == len(set(first.tolist()))
    assert first.max() - first.min() > n // CHUNK // 2  # drawn from all over the array, not a run of chunks
    assert len(plan.reads_of(1)) == 2 * FIRST_WINDOW_CHUNKS and later.window_size(0) > plan.window_size(1)
    # Every chunk of a later window fails at once (a chunk held back for good would hold a place in flight):
    # batch 0 needs window 0 only.
    store.shared["broken"] = set(range(n // CHUNK)) - {int(c) for c in first}
    with ThreadPoolExecutor(1) as pool:
        x, y = pool.submit(loader.batch, 0).result(timeout=60)
    assert np.isin(x[:, 0] // CHUNK, first).all() and np.array_equal(y, x[:, 0].astype(int) // (n // 10))
    assert len(np.unique(y)) >= 6  # a store sorted by label: the first batch mixes classes all the same
    with pytest.raises(daskfeed.ChunkReadError):
        loader.batch(plan.batches_of(1)[-1])
    loader.close()
    store.shared["broken"] = set()
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=32, seed=0, memory_budget="1.8MB") as loader:
        assert loader.batch(0)[0][:, 0].tolist() == x[:, 0].tolist()  # the same seed, the same batches
        for epoch in (0, 1):  # every sample once; epoch 1 in full windows
            served = np.concatenate([loader.batch(i, epoch)[0][:, 0] for i in range(len(loader))]).astype(int)
            assert np.array_equal(np.sort(served), np.arange(n))


def test_a_failed_chunk_reaches_the_window_that_needs_it_and_close_ends_the_decode(gated):
    store, arrays = gated
    loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=32, seed=0)
    plan = loader.plan(0)
    first = {int(c) for c in plan.read_chunk[plan.reads_of(0)]}
    broken = int(plan.read_chunk[plan.reads_of(1)][0])
    store.shared.update(allowed=None, broken={broken})
    loader.batch(0)  # window 0 is whole
    later = plan.batches_of(1)[-1]
    with pytest.raises(daskfeed.ChunkReadError, match=f"reading array x chunk {broken} ") as info:
        loader.batch(later)
    assert isinstance(info.value.__cause__, OSError) and loader.error is info.value
    assert broken not in first
    loader.close()
    assert join_daskfeed_threads() == []

    store.shared.update(allowed=first, broken=set())  # the gate stays shut: the decode waits on window 1
    loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=32, seed=0)
    loader.batch(0)
    loader.close()  # while the decode thread waits for held-back chunks
    assert join_daskfeed_threads() == []  # it ended with the loader


#: The first batch of epoch 0 for seed 0 on the store above: served while it is decoded (a change here changes
#: which batches every user's seed gives: make it on purpose, with a CHANGELOG line).
PINNED_PROGRESSIVE = [1498, 679, 944, 1150, 1303, 1141, 100, 1106]


def test_seed_0_gives_the_pinned_first_batch_while_decoding(gated):
    _, arrays = gated
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=8, seed=0) as loader:
        assert loader.plan(0).progressive
        assert loader.batch(0)[0][:, 0].astype(int).tolist() == PINNED_PROGRESSIVE


def test_fewer_chunks_a_shard_a_split_or_no_shuffle_serve_as_before(gated, tmp_path):
    """Below twice FIRST_WINDOW_CHUNKS chunks, and for an unshuffled loader, epoch 0 is one window, as before;
    shards and split parts of enough chunks are served while decoded too, every sample once."""
    _, arrays = gated
    x = np.arange(600, dtype="f4")[:, None]
    few = daskfeed.open_zarr(write_store(tmp_path / "few.zarr", {"x": x}, {"x": CHUNK}))  # 30 chunks
    with daskfeed.Loader(few["x"], batch_size=32, seed=0) as loader:
        assert loader.layout.resident and not loader.plan(0).progressive and loader.plan(0).n_windows == 1
    with daskfeed.Loader(arrays["x"], batch_size=32, seed=0, shuffle=False) as loader:
        assert not loader.plan(0).progressive
        assert np.array_equal(np.concatenate(list(loader))[:, 0], np.arange(N))
    train, _ = daskfeed.split((arrays["x"], arrays["y"]), (0.9, 0.1), seed=1)
    seen = []
    for index in range(2):
        with daskfeed.Loader(train, batch_size=32, seed=0, shard=(index, 2)) as loader:
            assert not loader.plan(0).progressive  # 50 chunks a shard: fewer than twice FIRST_WINDOW_CHUNKS
            seen.append(np.concatenate([x for x, _ in loader])[:, 0])
    with daskfeed.Loader(train, batch_size=32, seed=0) as loader:
        assert loader.plan(0).progressive
        whole = np.concatenate([x for x, _ in loader])[:, 0]
    assert np.array_equal(np.sort(whole), np.sort(np.concatenate(seen)))  # the part's samples, once each

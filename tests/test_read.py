"""The read path on its own: one record (Rows) from the plan to the buffers, the same rows by every way of reading,
and every ChunkReadError built in one place."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import re
import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import daskfeed
from daskfeed.read import BlockSource, GraphRunner, ReadJob, Rows, WorkerPool, read
from daskfeed.read.runner import LAST, Slots

N, WIDTH = 203, 6


def reads_of(seed: int, n: int = N) -> tuple[list[Rows], int]:
    """Reads as the plan makes them: runs of samples (not on any storage boundary), each all of its samples or a
    sorted subset, placed one after another."""
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate([[0, n], rng.integers(1, n, 9)]))
    reads, at = [], 0
    for c, (start, stop) in enumerate(itertools.pairwise(cuts)):
        keep = None
        if rng.random() < 0.6:
            keep = np.sort(rng.choice(stop - start, rng.integers(1, stop - start + 1), replace=False))
        read_ = Rows(c, int(start), int(stop), keep, at)
        reads.append(read_)
        at += read_.count
    return reads, at


def expected(data: np.ndarray, reads: list[Rows], scatter: np.ndarray | None, rows: int) -> np.ndarray:
    out = np.zeros((rows, *data.shape[1:]), data.dtype)
    for r in reads:
        ids = np.arange(r.start, r.stop) if r.keep is None else r.start + r.keep
        where = np.arange(r.at, r.at + len(ids))
        out[where if scatter is None else scatter[where]] = data[ids]
    return out


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.arange(N * WIDTH * 2, dtype=np.float32).reshape(N, WIDTH, 2)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory, data) -> dict[str, da.Array]:
    """The same values behind every way of reading: zarr's fast path (chunks cut along two axes), zarr read by
    zarr (a sharded array, which the fast path leaves to zarr), and a dask computation with uneven blocks."""
    root = zarr.open_group(tmp_path_factory.mktemp("read") / "s.zarr", mode="w")
    plain = root.create_array("plain", shape=data.shape, chunks=(17, 4, 2), dtype=data.dtype)
    plain[:] = data
    sharded = root.create_array("sharded", shape=data.shape, chunks=(5, WIDTH, 2), shards=(20, WIDTH, 2), dtype="f4")
    sharded[:] = data
    opened = daskfeed.open_zarr(str(root.store.root))
    blocks = (40, 3, 77, 50, 33)
    computed = da.from_array(data, chunks=(blocks, 3, 2)) * 1
    return {"fast path": opened["plain"], "zarr": opened["sharded"], "dask": computed}


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize("way", ["fast path", "zarr", "dask"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scattered=st.booleans())
def test_every_way_of_reading_puts_the_same_rows_in_place(arrays, data, way, scheduler, seed, scattered):
    source = BlockSource(arrays[way])
    assert (source.codec is not None) == (way == "fast path")  # each case takes the path it is named after
    reads, rows = reads_of(seed)
    scatter = np.random.default_rng(seed).permutation(rows) if scattered else None
    buffer = np.full((rows, WIDTH, 2), -1, np.float32)
    decoded = read([ReadJob("x", source, buffer, reads, scatter)], GraphRunner(scheduler))
    np.testing.assert_array_equal(buffer, expected(data, reads, scatter, rows))
    touched = {b for r in reads for b in range(len(source.bounds) - 1) if r.within(*source.block_range(b), b)}
    assert decoded == sum(np.diff(source.block_range(b))[0] for b in touched) * source.row_bytes


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), step=st.integers(1, 60))
def test_a_read_cut_at_any_boundaries_keeps_each_sample_once_in_its_place(seed, step):
    """Rows.within, which cuts a read into blocks and stored chunks, partitions what the read keeps."""
    for r in reads_of(seed)[0]:
        parts = [p for c in range(N // step + 1) if (p := r.within(c * step, (c + 1) * step, c)) is not None]
        ids = np.concatenate([np.arange(p.start, p.stop)[p.local(p.start)] for p in parts])
        places = np.concatenate([np.arange(p.at, p.at + p.count) for p in parts])
        whole = np.arange(r.start, r.stop) if r.keep is None else r.start + r.keep
        np.testing.assert_array_equal(ids, whole)
        np.testing.assert_array_equal(places, np.arange(r.at, r.at + r.count))
        assert all(p.chunk * step <= p.start < p.stop <= (p.chunk + 1) * step for p in parts)


def test_every_chunk_read_error_is_built_in_one_place():
    """The read path builds its errors in daskfeed/read/failure.py only, so each names array, chunk and samples
    the same way."""
    package = pathlib.Path(daskfeed.__file__).parent
    built = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"ChunkReadError\(\s*f?[\"']", path.read_text())
    }
    assert built == {"read/failure.py"}


def test_the_read_pool_runs_the_lowest_rank_first_then_in_the_order_submitted():
    pool = WorkerPool(max_threads=1, name="daskfeed-test")
    started, release, ran = threading.Event(), threading.Event(), []

    def block():
        started.set()
        release.wait(10)

    pool.submit(block, rank=(0, 0))
    assert started.wait(10)  # the one thread is busy: the rest queue up
    futures = [
        pool.submit(ran.append, name, rank=rank)
        for name, rank in [("ahead-2", (0, 2)), ("next-epoch", (1, 0)), ("window-1", (0, 1)), ("last", LAST)]
    ]
    futures.append(pool.submit(ran.append, "window-1-again", rank=(0, 1)))
    release.set()
    for future in futures:
        future.result(timeout=10)
    assert ran == ["window-1", "window-1-again", "ahead-2", "next-epoch", "last"]
    pool.close()


def test_places_in_flight_go_to_the_lowest_rank_waiting_and_none_is_lost():
    async def main():
        slots = Slots(2)
        got, gate = [], asyncio.Event()

        async def request(name, rank):
            async with slots.held(rank):
                got.append(name)
                await gate.wait()

        first = [asyncio.ensure_future(request(f"early-{i}", (0, 5))) for i in range(2)]
        await asyncio.sleep(0)  # both places taken
        waiting = [asyncio.ensure_future(request(name, rank)) for name, rank in [("w3", (0, 3)), ("w1", (0, 1))]]
        waiting += [asyncio.ensure_future(request("w2", (0, 2))), asyncio.ensure_future(request("gone", (0, 0)))]
        await asyncio.sleep(0)
        waiting[-1].cancel()  # a waiter that gives up holds no place
        await asyncio.sleep(0)
        assert got == ["early-0", "early-1"]
        gate.set()
        await asyncio.gather(*first, *waiting[:-1])
        assert got == ["early-0", "early-1", "w1", "w2", "w3"]
        assert slots._free == 2 and not slots._waiting  # every place came back
        async with slots.held((9,)), slots.held((9,)):  # and both can be taken again at once
            pass

    asyncio.run(main())

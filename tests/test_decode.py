"""Chunks decoded on daskfeed's threads: the same values as zarr's own reads, many requests in flight, errors."""

from __future__ import annotations

import asyncio
import threading
import time

import dask.array as da
import numcodecs
import numpy as np
import pytest
import zarr
from conftest import join_daskfeed_threads
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import daskfeed
from daskfeed.decode import ChunkCodec

N = 1003

#: name -> (zarr_format, dtype, sample shape, chunks, create_array keywords)
CASES = {
    "v3 uint8 images cut on every axis": (3, "u1", (6, 4, 3), (100, 4, 2, 2), {}),
    "v3 float64 blosc, NaN fill": (
        3,
        "f8",
        (3,),
        (64, 3),
        {"compressors": BloscCodec(cname="lz4"), "fill_value": np.nan},
    ),
    "v3 big-endian int16": (3, "i2", (2,), (100, 2), {"serializer": BytesCodec(endian="big")}),
    "v3 bool gzip": (3, "bool", (5,), (128, 5), {"compressors": GzipCodec()}),
    "v3 transpose + crc32c": (
        3,
        "i4",
        (3, 2),
        (50, 3, 2),
        {"filters": [TransposeCodec(order=(2, 1, 0))], "compressors": [ZstdCodec(), Crc32cCodec()]},
    ),
    "v3 uncompressed, fill 7": (3, "u2", (4,), (100, 4), {"compressors": None, "fill_value": 7}),
    "v2 big-endian int32 zstd, fill 7": (2, ">i4", (3,), (100, 3), {"fill_value": 7}),
    "v2 float32 with a filter, F order": (
        2,
        "f4",
        (3, 2),
        (90, 2, 2),
        {"filters": [numcodecs.Delta(dtype="f4")], "compressors": numcodecs.Blosc(), "order": "F"},
    ),
}


def make_array(path, case: str):
    fmt, dtype, shape, chunks, kwargs = CASES[case]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, (N, *shape)).astype(dtype)
    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=dtype, zarr_format=fmt, **kwargs)
    z[:] = data
    # One chunk row left unwritten, as zarr leaves chunks that hold only the fill value: served as the fill value.
    lo, hi = 2 * chunks[0], 3 * chunks[0]
    z[lo:hi] = z.fill_value
    data[lo:hi] = z.fill_value
    return z, data


def drop_chunk_files(path, row: int, fmt: int) -> int:
    """Delete the stored chunks of chunk row ``row`` (a copy that lost them); returns how many there were."""
    import pathlib

    root = pathlib.Path(path)
    found = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))]
    found = [p for p in found if p.relative_to(root).parts[1 if fmt == 3 else 0].split(".")[0] == str(row)]
    for p in found:
        p.unlink()
    return len(found)


def served_in_storage_order(x, ids, **knobs):
    with daskfeed.Loader(x, ids, batch_size=64, seed=3, missing_chunks="fill", **knobs) as loader:
        batches = list(loader)
        stats = loader.stats
    xs = np.concatenate([b[0] for b in batches])
    order = np.argsort(np.concatenate([b[1] for b in batches]))
    return xs[order], stats


@pytest.mark.parametrize("case", list(CASES))
def test_chunks_decoded_by_daskfeed_equal_zarrs_own_read(tmp_path, case):
    z, data = make_array(tmp_path / "a.zarr", case)
    fmt, _, _, chunks, _ = CASES[case]
    assert drop_chunk_files(tmp_path / "a.zarr", 4, fmt) >= 1  # and a chunk row missing from the store
    data[4 * chunks[0] : 5 * chunks[0]] = z.fill_value
    expected = z[:]
    np.testing.assert_array_equal(expected, data)  # zarr's own read: the reference
    assert ChunkCodec.of(z) is not None  # this case takes daskfeed's own decoding
    x = daskfeed.open_zarr(z)
    ids = np.arange(N)
    bytes_per_sample = data[0].nbytes + 8
    for knobs in (
        {"memory_budget": "64MB"},  # resident: every chunk decoded once, in one read
        {"memory_budget": 3 * 320 * bytes_per_sample, "reads_per_chunk": 1},  # windows
        {"memory_budget": 3 * 320 * bytes_per_sample, "reads_per_chunk": 3},  # rows picked out of each chunk
    ):
        got, stats = served_in_storage_order(x, ids, **knobs)
        np.testing.assert_array_equal(got, expected, err_msg=str(knobs))
        assert stats["resident"] == (knobs["memory_budget"] == "64MB")


def test_a_sharded_array_is_left_to_zarr_and_reads_the_same(tmp_path):
    data = np.arange(N * 4, dtype="i4").reshape(N, 4)
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(20, 4), shards=(200, 4), dtype="i4")
    z[:] = data
    assert ChunkCodec.of(z) is None
    got, _ = served_in_storage_order(daskfeed.open_zarr(z), np.arange(N), memory_budget="40KB", reads_per_chunk=1)
    np.testing.assert_array_equal(got, data)


def test_a_dask_array_the_user_made_with_from_zarr_is_decoded_the_same(tmp_path):
    z, data = make_array(tmp_path / "a.zarr", "v3 uint8 images cut on every axis")
    x = da.from_zarr(z, chunks=(250, 3, 4, 3))  # blocks across zarr chunks, and other axes cut differently
    got, stats = served_in_storage_order(x, np.arange(N), memory_budget="100KB", reads_per_chunk=1)
    np.testing.assert_array_equal(got, data)
    assert not stats["resident"]
    assert daskfeed.inputs.zarr_behind(x) is z and daskfeed.inputs.zarr_behind(x + 1) is None


class LatencyStore(zarr.storage.WrapperStore):
    """A local store whose every chunk request waits ``delay`` seconds, like a remote one; counts requests in
    flight, and can be made to fail or to hang on one key."""

    def __init__(self, store, delay=0.02, state=None):
        super().__init__(store)
        self.delay = delay
        self.state = state if state is not None else {"now": 0, "most": 0, "fail": None, "hang": None, "gets": 0}
        self.lock = threading.Lock()

    def _with_store(self, store):
        return type(self)(store, self.delay, self.state)

    async def get(self, key, prototype, byte_range=None):
        if not key.startswith("c/"):
            return await self._store.get(key, prototype, byte_range)
        state = self.state
        state["now"] += 1  # the event loop runs one coroutine at a time: no lock needed
        state["gets"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await asyncio.sleep(self.delay)
            if state["fail"] and key == state["fail"]:
                raise OSError(f"connection reset reading {key}")
            if state["hang"] is not None and key == "c/3/0":
                while not state["hang"].is_set():
                    await asyncio.sleep(0.01)
            return await self._store.get(key, prototype, byte_range)
        finally:
            state["now"] -= 1


@pytest.fixture
def slow_store(tmp_path):
    data = np.arange(2000 * 3, dtype="f4").reshape(2000, 3)
    path = tmp_path / "slow.zarr"
    z = zarr.create_array(str(path), shape=data.shape, chunks=(25, 3), dtype="f4")  # 80 chunks
    z[:] = data
    store = LatencyStore(zarr.storage.LocalStore(str(path), read_only=True))
    return zarr.open_array(store, mode="r"), store.state, data


@pytest.mark.parametrize("concurrency", [4, 32])
def test_a_store_with_latency_gets_concurrency_requests_in_flight(slow_store, concurrency):
    z, state, data = slow_store
    got, stats = served_in_storage_order(
        daskfeed.open_zarr(z), np.arange(2000), memory_budget="60KB", reads_per_chunk=1, concurrency=concurrency
    )
    np.testing.assert_array_equal(got, data)
    assert not stats["resident"] and state["gets"] >= 80
    # Requests overlap up to the knob, never more, although two windows may be read at once.
    assert state["most"] == concurrency if concurrency == 4 else 8 < state["most"] <= concurrency, state


def test_a_failing_request_names_the_array_and_chunk(slow_store):
    z, state, _ = slow_store
    state["fail"] = "c/7/0"
    loader = daskfeed.Loader({"image": daskfeed.open_zarr(z)}, batch_size=50, shuffle=False, memory_budget="30KB")
    with pytest.raises(
        daskfeed.ChunkReadError, match=r"reading array x\['image'\] chunk 7 \(samples 175-199\) failed: "
    ):
        for _ in loader:
            pass
    loader.close()
    assert join_daskfeed_threads() == []


def test_close_while_a_request_hangs_ends_the_read(slow_store):
    z, state, _ = slow_store
    state["hang"] = threading.Event()
    loader = daskfeed.Loader(daskfeed.open_zarr(z), batch_size=50, shuffle=False, memory_budget="30KB")
    got: list = []

    def consume():
        try:
            for _ in loader:
                pass
        except daskfeed.DaskfeedError as err:
            got.append(err)

    consumer = threading.Thread(target=consume)
    consumer.start()
    deadline = time.monotonic() + 30
    while state["now"] == 0 and time.monotonic() < deadline:  # the read of chunk 3 is waiting
        time.sleep(0.01)
    loader.close()
    consumer.join(timeout=30)
    assert not consumer.is_alive() and len(got) == 1, got
    state["hang"].set()
    assert join_daskfeed_threads() == []

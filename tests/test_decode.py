"""Chunks decoded on daskfeed's threads: the same values as zarr's own reads, many requests in flight, errors."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar

import dask.array as da
import numcodecs
import numpy as np
import pytest
import zarr
from conftest import join_daskfeed_threads
from test_loader import CountingStore
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import daskfeed
from daskfeed.errors import FastPathWarning
from daskfeed.read.codec import ChunkCodec

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
    warnings.simplefilter("error", FastPathWarning)  # the self-check agrees with zarr on every case
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


def test_the_self_check_reads_no_chunk_again(tmp_path):
    # A configuration no other test uses, so that its first decode is the one compared with zarr's.
    data = np.arange(N * 5, dtype="u4").reshape(N, 5)
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=data.shape, chunks=(71, 5), dtype="u4")
    z[:] = data
    counting = CountingStore(zarr.storage.LocalStore(str(tmp_path / "c.zarr"), read_only=True))
    z = zarr.open_array(counting, mode="r")
    warnings.simplefilter("error", FastPathWarning)
    assert ChunkCodec.of(z) is not None
    with daskfeed.Loader(daskfeed.open_zarr(z), batch_size=64, seed=0) as loader:  # held whole: read once
        for _ in range(2):
            got = np.concatenate(list(loader))
            np.testing.assert_array_equal(np.sort(got[:, 0]), data[:, 0])
    assert len(counts := counting.counts) == -(-N // 71) and set(counts.values()) == {1}, counts


@dataclass(frozen=True)
class XorCodec(BytesBytesCodec):
    """A zarr codec that stores bytes XOR 0x5A. ``drift``, set by a test, makes the synchronous decode that
    daskfeed calls differ from the coroutine zarr's own reads call, as when a zarr internal changes."""

    is_fixed_size = True
    drift: ClassVar[str | None] = None  # None, "wrong" (a flipped bit) or "raises"
    name: ClassVar[str] = "daskfeed-test-xor"

    @classmethod
    def from_dict(cls, data):
        return cls()

    def to_dict(self):
        return {"name": self.name}

    def _xor(self, chunk, spec):
        return spec.prototype.buffer.from_array_like(chunk.as_numpy_array() ^ np.uint8(0x5A))

    def _decode_sync(self, chunk, spec):
        if XorCodec.drift == "raises":
            raise NotImplementedError("this codec decodes only in coroutines")
        out = self._xor(chunk, spec).as_numpy_array()
        return spec.prototype.buffer.from_array_like(out if XorCodec.drift is None else out ^ np.uint8(1))

    async def _decode_single(self, chunk, spec):
        return self._xor(chunk, spec)

    def _encode_sync(self, chunk, spec):
        return self._xor(chunk, spec)

    async def _encode_single(self, chunk, spec):
        return self._xor(chunk, spec)

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        return input_byte_length


@dataclass(frozen=True)
class AsyncXorCodec(BytesBytesCodec):
    """The same codec without a synchronous decode, as zarr 3.1.0 - 3.1.5 and some plugins have them."""

    is_fixed_size = True
    name: ClassVar[str] = "daskfeed-test-async-xor"

    @classmethod
    def from_dict(cls, data):
        return cls()

    def to_dict(self):
        return {"name": self.name}

    async def _decode_single(self, chunk, spec):
        return spec.prototype.buffer.from_array_like(chunk.as_numpy_array() ^ np.uint8(0x5A))

    async def _encode_single(self, chunk, spec):
        return spec.prototype.buffer.from_array_like(chunk.as_numpy_array() ^ np.uint8(0x5A))

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        return input_byte_length


for _codec in (XorCodec, AsyncXorCodec):
    zarr.registry.register_codec(_codec.name, _codec)


def codec_array(path, codec, rows: int):
    data = np.random.default_rng(1).integers(0, 2**31, (N, 4)).astype("i4")
    z = zarr.create_array(str(path), shape=data.shape, chunks=(rows, 4), dtype="i4", compressors=[codec])
    z[:] = data
    return zarr.open_array(str(path), mode="r"), data


@pytest.mark.parametrize(
    ("drift", "rows", "why"),
    [
        ("wrong", 97, r"daskfeed's decode of stored chunk 'c/\d+/0' differs from zarr's own read of the same bytes"),
        ("raises", 89, r"decoding stored chunk 'c/\d+/0' raised NotImplementedError: this codec decodes only in"),
    ],
)
def test_a_decode_that_disagrees_with_zarrs_own_read_is_turned_off_with_a_warning(
    tmp_path, monkeypatch, drift, rows, why
):
    monkeypatch.setattr(XorCodec, "drift", drift)
    z, data = codec_array(tmp_path / "a.zarr", XorCodec(), rows)
    assert ChunkCodec.of(z) is not None  # it has a synchronous decode: tried, and checked at its first chunk
    with pytest.warns(FastPathWarning) as caught:
        got, _ = served_in_storage_order(daskfeed.open_zarr(z), np.arange(N), memory_budget="40KB", reads_per_chunk=1)
    np.testing.assert_array_equal(got, data)  # every chunk decoded by zarr, the one compared too
    (warning,) = [w for w in caught if issubclass(w.category, FastPathWarning)]  # once, from many threads
    message = str(warning.message)
    assert message.startswith(f"daskfeed's own chunk decoding is off for zarr array '{z.store_path}': "), message
    assert re.search(why, message) and f"(zarr {zarr.__version__}, numpy {np.__version__};" in message, message
    assert "read through zarr instead" in message and issubclass(FastPathWarning, daskfeed.DaskfeedWarning)
    # The verdict holds for the process: an array of the same configuration goes to zarr at once, unwarned.
    other, data = codec_array(tmp_path / "b.zarr", XorCodec(), rows)
    warnings.simplefilter("error", FastPathWarning)
    assert ChunkCodec.of(other) is None
    got, _ = served_in_storage_order(daskfeed.open_zarr(other), np.arange(N), memory_budget="40KB", reads_per_chunk=1)
    np.testing.assert_array_equal(got, data)


def test_a_codec_without_a_synchronous_decode_is_read_by_zarr_with_a_warning(tmp_path):
    z, data = codec_array(tmp_path / "a.zarr", AsyncXorCodec(), 100)
    with pytest.warns(
        FastPathWarning,
        match=rf"off for zarr array .*: codec AsyncXorCodec has no synchronous decode .*\(zarr {zarr.__version__},",
    ):
        assert ChunkCodec.of(z) is None
    warnings.simplefilter("error", FastPathWarning)  # once per process and configuration
    got, _ = served_in_storage_order(daskfeed.open_zarr(z), np.arange(N), memory_budget="40KB", reads_per_chunk=1)
    np.testing.assert_array_equal(got, data)


def test_a_rectilinear_grid_is_left_to_zarr_with_a_warning(tmp_path):
    if not hasattr(zarr.Array, "read_chunk_sizes"):
        pytest.skip(f"zarr {zarr.__version__} has no rectilinear chunk grids (zarr 3.4 on)")
    with zarr.config.set({"array.rectilinear_chunks": True}):
        z = zarr.create_array(str(tmp_path / "r.zarr"), shape=(60, 4), chunks=[[10, 20, 30], [4]], dtype="i4")
    with pytest.warns(FastPathWarning, match=r"off for zarr array .*: its chunk grid is not regular"):
        assert ChunkCodec.of(z) is None


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
        self.state.setdefault("hanging", 0)  # requests of the hang key waiting now
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
                state["hanging"] += 1
                try:
                    while not state["hang"].is_set():
                        await asyncio.sleep(0.01)
                finally:
                    state["hanging"] -= 1
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


@pytest.mark.slow
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
    for _ in range(3000):  # until the read of chunk 3 hangs (a hang guard, not a timing)
        if state["hanging"]:
            break
        time.sleep(0.01)
    assert state["hanging"] and consumer.is_alive() and not got  # the consumer waits on the hung read
    loader.close()
    consumer.join(timeout=30)
    assert not consumer.is_alive() and len(got) == 1, got
    state["hang"].set()
    assert join_daskfeed_threads() == []

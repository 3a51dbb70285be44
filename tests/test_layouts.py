"""Stores as users write them (zarr, dask and xarray defaults, labels chunked unlike images, sharded v3,
ingest's own layout) through both doors: exact epochs, aligned labels, same batches, shards, chunk reads."""

from __future__ import annotations

import collections

import dask.array as da
import numpy as np
import pytest
import zarr
from test_loader import CountingStore

import daskfeed

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.tf  # both doors, through Keras and TensorFlow

N = 1003


def images(n=N):
    """x: (n, 4, 4, 3) int32 whose every value is the sample's index; y: the index as int64."""
    x = np.broadcast_to(np.arange(n, dtype="i4")[:, None, None, None], (n, 4, 4, 3)).copy()
    return x, np.arange(n, dtype="i8")


def write_layout(path, layout):
    """Write the index store the way users' tools do; returns the path of the zarr group."""
    x, y = images()
    path = str(path)
    if layout == "zarr-auto":  # zarr's own default chunking, whatever it picks at this size
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks="auto")
        group.create_array("y", data=y, chunks="auto")
    elif layout == "zarr-default-shape":  # the shape zarr's rule gives at 100k images: tiles, labels unlike x
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(251, 2, 2, 1))
        group.create_array("y", data=y, chunks=(500,))
    elif layout == "dask-defaults":  # dask's auto chunks (here forced small), labels in one chunk
        da.from_array(x, chunks=(438, 4, 4, 3)).to_zarr(path, component="x")
        da.from_array(y, chunks=-1).to_zarr(path, component="y")
    elif layout == "xarray":
        xr = pytest.importorskip("xarray")
        ds = xr.Dataset({"x": (("sample", "h", "w", "c"), x), "y": (("sample",), y)})
        ds.chunk({"sample": 300}).to_zarr(path, mode="w", consolidated=False)
    elif layout == "x97-y211":
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(97, 4, 4, 3))
        group.create_array("y", data=y, chunks=(211,))
    elif layout == "sharded":
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(20, 4, 4, 3), shards=(200, 4, 4, 3))
        group.create_array("y", data=y, chunks=(200,))
    elif layout == "ingest":
        daskfeed.ingest({"x": x, "y": y}, path, chunk_length=100)
    return path


LAYOUTS = ["zarr-auto", "zarr-default-shape", "dask-defaults", "xarray", "x97-y211", "sharded", "ingest"]
BUDGETS = {"default": None, "small": "100KB"}  # all in memory (200 KB of data), and windows of ~160 samples


def loader_kwargs(budget):
    return {"memory_budget": BUDGETS[budget]} if BUDGETS[budget] else {}


def check_epoch(batches, n=N):
    """Every sample once, and each image with its own label."""
    ids = []
    for x, y in batches:
        x, y = np.asarray(x), np.asarray(y)
        assert (x == x[:, :1, :1, :1]).all()  # an image is whole: every tile of it came from one sample
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
        ids.append(y)
    ids = np.concatenate(ids)
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    return ids


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_through_both_doors(tmp_path, layout, budget):
    arrays = daskfeed.open_zarr(write_layout(tmp_path / f"{layout}.zarr", layout))
    kwargs = dict(batch_size=64, seed=3, **loader_kwargs(budget))
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **kwargs)
    ds = daskfeed.as_dataset(arrays["x"], arrays["y"], **kwargs)
    assert seq.loader.stats["resident"] == (budget == "default")
    for _epoch in range(2):
        from_seq = check_epoch(seq[i] for i in range(len(seq)))
        from_ds = check_epoch((x.numpy(), y.numpy()) for x, y in ds)
        np.testing.assert_array_equal(from_seq, from_ds)  # same seed, same batches, in both doors
        assert not np.array_equal(from_seq, np.arange(N))
        seq.on_epoch_begin()
        seq.on_epoch_end()
    # The read units are the chunks of x, whatever the labels' chunks.
    assert seq.loader.stats["read_units"] == len(arrays["x"].chunks[0])
    seq.close()


@pytest.mark.parametrize("count", [2, 5, 11])
def test_shards_partition_the_epoch_on_mismatched_chunks(tmp_path, count):
    """x by 97 and y by 211 share no boundary but 0 and the end; shards of x's 11 chunks still work."""
    arrays = daskfeed.open_zarr(write_layout(tmp_path / "m.zarr", "x97-y211"))
    for budget in BUDGETS:
        served = []
        for index in range(count):
            kwargs = dict(batch_size=16, seed=4, shard=(index, count), **loader_kwargs(budget))
            with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as shard:
                batches = [shard.batch(i) for i in range(len(shard))]
            for x, y in batches:
                np.testing.assert_array_equal(x[:, 0, 0, 0], y)
            served.append(np.concatenate([y for _, y in batches]))
        every = np.concatenate(served)
        np.testing.assert_array_equal(np.sort(every), np.arange(N))  # disjoint, and together the epoch


def counting_group(path):
    counting = CountingStore(zarr.storage.LocalStore(path, read_only=True))
    return zarr.open_group(counting, mode="r"), counting.counts


@pytest.mark.parametrize("layout", ["zarr-default-shape", "dask-defaults", "x97-y211", "sharded"])
def test_data_that_fits_reads_each_chunk_once_over_several_epochs(tmp_path, layout):
    group, counts = counting_group(write_layout(tmp_path / "d.zarr", layout))
    with daskfeed.Loader(daskfeed.open_zarr(group["x"]), daskfeed.open_zarr(group["y"]), batch_size=50) as loader:
        for _ in range(3):
            check_epoch(list(loader))
        stats = loader.stats
    assert stats["resident"] and stats["windows_computed"] == 1
    if layout != "sharded":
        assert counts and set(counts.values()) == {1}, counts
    else:  # a shard file is read by range: each inner chunk once, plus the shard's index
        x_reads = sum(v for k, v in counts.items() if k.startswith("x/"))
        assert x_reads <= -(-N // 20) + 2 * -(-N // 200), counts


class RangeCountingStore(CountingStore):
    """Counts whole-object reads and byte-range reads separately."""

    def __init__(self, store, counts=None):
        super().__init__(store, counts)
        self.ranges = collections.Counter()

    def _with_store(self, store):
        copy = type(self)(store, self.counts)
        copy.ranges = self.ranges
        return copy

    async def get(self, key, prototype, byte_range=None):
        if "/c/" in key:
            self.ranges[type(byte_range).__name__] += 1
        return await super().get(key, prototype, byte_range)

    async def get_ranges(self, key, byte_ranges, **kwargs):  # zarr 3.4 reads a shard's inner chunks here
        if "/c/" in key:
            for byte_range in byte_ranges:
                self.ranges[type(byte_range).__name__] += 1
        async for group in self._store.get_ranges(key, byte_ranges, **kwargs):
            yield group


def test_a_sharded_array_is_read_by_inner_chunk_never_whole_shards(tmp_path):
    path = write_layout(tmp_path / "s.zarr", "sharded")
    store = RangeCountingStore(zarr.storage.LocalStore(path, read_only=True))
    group = zarr.open_group(store, mode="r")
    x = daskfeed.open_zarr(group["x"])
    assert x.chunks[0][0] == 20  # the read units are the 20-sample inner chunks, not the 200-sample shards
    with daskfeed.Loader(x, batch_size=32, seed=0, memory_budget="40KB", reads_per_chunk=1) as loader:
        assert loader.stats["read_units"] == -(-N // 20) and not loader.stats["resident"]
        for _ in loader:
            pass
    # Every read of a shard file asked for a byte range (an inner chunk or the shard's index), never all of it.
    assert store.ranges["NoneType"] == 0 and store.ranges["RangeByteRequest"] >= N // 20


def test_ingest_rewrites_a_zarr_default_store_and_shuffles_it(tmp_path):
    source = write_layout(tmp_path / "src.zarr", "zarr-default-shape")
    group, counts = counting_group(source)
    report = daskfeed.ingest(group, tmp_path / "out.zarr", chunk_length=100, shuffle=True, seed=1)
    assert report.arrays == {"x": ((N, 4, 4, 3), "int32"), "y": ((N,), "int64")} and report.shuffled
    # Read in runs of the source's own chunks (251 samples x 12 tiles): each tile read about once, not 3x.
    x_reads = [v for k, v in counts.items() if k.startswith("x/")]
    assert len(x_reads) == 4 * 12 and max(x_reads) <= 2
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["x"].chunks == (100, 4, 4, 3) and out["y"].chunks == (100,)
    x, y = out["x"][:], out["y"][:]
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # one permutation for every array
    assert not np.array_equal(y, np.arange(N)) and np.array_equal(np.sort(y), np.arange(N))
    with daskfeed.Loader(daskfeed.open_zarr(out["x"]), daskfeed.open_zarr(out["y"]), memory_budget="100KB") as loader:
        assert loader.reads_per_chunk == 1  # written in random order: one read mixes


def test_ingest_from_paths_and_python_arrays(tmp_path, capsys):
    from daskfeed.cli import main

    source = write_layout(tmp_path / "src.zarr", "dask-defaults")
    assert main(["ingest", source, str(tmp_path / "a.zarr"), "--chunk-length", "128", "--quiet"]) == 0
    assert main(["ingest", f"img={source}/x", str(tmp_path / "b.zarr"), "--quiet"]) == 0
    capsys.readouterr()
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(a["x"][:], images()[0])
    assert a["x"].chunks[0] == 128 and sorted(a.array_keys()) == ["x", "y"]
    assert sorted(zarr.open_group(str(tmp_path / "b.zarr"), mode="r").array_keys()) == ["img"]
    x, y = images()
    xr = pytest.importorskip("xarray")
    daskfeed.ingest(
        {"x": da.from_array(x, chunks=300), "y": xr.DataArray(y, dims="sample")}, tmp_path / "c.zarr", chunk_length=50
    )
    c = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    np.testing.assert_array_equal(c["x"][:], x)
    np.testing.assert_array_equal(c["y"][:], y)
    with pytest.raises(daskfeed.InputTypeError, match="must be a path, a zarr array or group"):
        daskfeed.ingest([np.zeros(3)], tmp_path / "d.zarr")


def test_a_layout_that_decodes_too_much_warns_once_with_the_command_that_fixes_it(tmp_path):
    path = write_layout(tmp_path / "w.zarr", "zarr-default-shape")
    arrays = daskfeed.open_zarr(path)
    with pytest.warns(daskfeed.LayoutWarning, match=r"decodes .*x the data it serves") as caught:
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=16, memory_budget="20KB")
    # Once (this store's chunks also draw the warning about their size against the budget, a separate one).
    (warning,) = [w for w in caught if "the data it serves" in str(w.message)]
    assert f"daskfeed ingest {path}/x {path}/y " in str(warning.message) and "--shuffle" in str(warning.message)
    assert warning.filename == __file__  # it points at the user's line
    assert loader.stats["amplification"] > 2 and "amplification" in repr(loader)
    loader.close()

"""open_zarr and the checks on x / y / sample_weight: kinds, lengths, dtypes, chunk alignment."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import write_store

import daskfeed
from daskfeed.inputs import normalize_inputs


def test_open_zarr_group_path_and_array(xy_store):
    arrays = daskfeed.open_zarr(xy_store)
    assert sorted(arrays) == ["x", "y"]
    assert arrays["x"].chunks[0][:2] == (100, 100) and arrays["y"].chunks[0] == (250, 250, 250, 250, 3)
    np.testing.assert_array_equal(arrays["y"].compute(), np.arange(1003))
    one = daskfeed.open_zarr(xy_store + "/y")
    assert isinstance(one, da.Array) and one.shape == (1003,)
    group = zarr.open_group(xy_store, mode="r")
    assert daskfeed.open_zarr(group["x"]).shape == (1003, 3)
    assert sorted(daskfeed.open_zarr(group)) == ["x", "y"]


@pytest.mark.slow
def test_open_zarr_over_http(tmp_path, http_root):
    pytest.importorskip("aiohttp")
    x = np.arange(300, dtype="i4").reshape(100, 3)
    write_store(tmp_path / "remote.zarr", {"x": x, "y": np.arange(100)}, {"x": 30, "y": 50})
    arrays = daskfeed.open_zarr(f"{http_root}/remote.zarr")
    assert sorted(arrays) == ["x", "y"] and arrays["x"].chunks[0] == (30, 30, 30, 10)
    one = daskfeed.open_zarr(f"{http_root}/remote.zarr/x", storage_options={"block_size": 0})
    with daskfeed.Loader(one, arrays["y"], batch_size=16, seed=0) as loader:
        rows = np.concatenate([b[1] for b in loader])
        xs = np.concatenate([loader.batch(i, 0)[0] for i in range(len(loader))])
    assert np.array_equal(np.sort(rows), np.arange(100))
    np.testing.assert_array_equal(xs[:, 0], rows * 3)
    with pytest.raises(daskfeed.StoreError, match="is not a zarr store"):
        daskfeed.open_zarr(f"{http_root}/nothing-here.zarr")


def test_open_zarr_nested_group(tmp_path):
    root = zarr.open_group(str(tmp_path / "n.zarr"), mode="w")
    root.create_group("inputs").create_array("image", data=np.zeros((4, 2), "u1"), chunks=(2, 2))
    root.create_array("label", data=np.zeros(4, "i8"), chunks=(2,))
    assert sorted(daskfeed.open_zarr(str(tmp_path / "n.zarr"))) == ["inputs/image", "label"]


def test_open_zarr_bad_paths(tmp_path):
    with pytest.raises(daskfeed.StoreError, match="does not exist"):
        daskfeed.open_zarr(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not zarr")
    with pytest.raises(daskfeed.StoreError, match="is not a zarr store"):
        daskfeed.open_zarr(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(daskfeed.StoreError, match="holds no array"):
        daskfeed.open_zarr(tmp_path / "empty.zarr")
    with pytest.raises(TypeError, match="store must be a path"):
        daskfeed.open_zarr(42)


def test_each_lazy_leaf_keeps_its_own_chunks(xy_store):
    arrays = daskfeed.open_zarr(xy_store)
    x, y = normalize_inputs(arrays["x"], arrays["y"]).leaves
    assert x.bounds.tolist() == [*range(0, 1001, 100), 1003] and y.bounds.tolist() == [0, 250, 500, 750, 1000, 1003]
    assert normalize_inputs(np.arange(1003)).leaves[0].bounds is None  # numpy: served by index, never chunked


def test_numpy_xarray_and_dicts():
    xr = pytest.importorskip("xarray")
    x = xr.DataArray(np.zeros((10, 2), "f4"), dims=("sample", "feature"))
    inputs = normalize_inputs({"a": x, "b": np.ones((10, 1), "u1")}, np.zeros(10, "i8"), np.ones(10, "f4"))
    assert [leaf.name for leaf in inputs.leaves] == ["x['a']", "x['b']", "y", "sample_weight"]
    packed = inputs.pack([np.zeros(1), np.ones(1), np.full(1, 2), np.full(1, 3)])
    assert isinstance(packed, tuple) and set(packed[0]) == {"a", "b"} and packed[2][0] == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(x=np.zeros((10, 2)), y=np.zeros(9)),
            daskfeed.InputError,
            r"arrays x and y must have the same length on axis 0 \(samples\), got 10 and 9",
        ),
        (dict(x=np.zeros((0, 2))), daskfeed.InputError, r"x has zero samples"),
        (dict(x=np.array(3.0)), daskfeed.InputError, r"x is a 0-d array"),
        (
            dict(x=np.array([object()] * 3)),
            daskfeed.InputTypeError,
            r"x has dtype object, which cannot become a tensor",
        ),
        (dict(x=np.array(["a", "b"])), daskfeed.InputTypeError, r"x has dtype <U1, which cannot become a tensor"),
        (
            dict(x={"a": np.zeros(5), "b": np.zeros(6)}),
            daskfeed.InputError,
            r"x\['a'\] and x\['b'\] must have the same length",
        ),
        (dict(x={}), daskfeed.InputError, r"x is an empty dict"),
        (dict(x=[1, 2, 3]), daskfeed.InputTypeError, r"x must be a dask array.*got builtins.list. Convert lists"),
        (dict(x=np.zeros(3), sample_weight=np.ones(3)), daskfeed.InputError, r"sample_weight needs y"),
        (dict(x=None), daskfeed.InputError, r"x is required"),
        (dict(x={1: np.zeros(3)}), daskfeed.InputTypeError, r"x dict keys must be strings, got 1"),
    ],
)
def test_bad_inputs_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        normalize_inputs(**kwargs)


def test_unknown_chunk_sizes():
    x = da.from_array(np.arange(10), chunks=5)
    x = x[x > 3]
    with pytest.raises(daskfeed.InputError, match="unknown chunk sizes.*compute_chunk_sizes"):
        normalize_inputs(x)


def test_unknown_chunk_sizes_on_an_inner_axis_are_named_at_construction():
    x = da.from_array(np.arange(40).reshape(4, 10), chunks=2)
    x = x[:, x[0] > 3]  # boolean indexing on axis 1: chunk sizes there are unknown (nan)
    with pytest.raises(daskfeed.InputError, match=r"x has unknown chunk sizes on axis 1 .*compute_chunk_sizes\(\)"):
        daskfeed.Loader(x, batch_size=2, seed=0)
    with daskfeed.Loader(x.compute_chunk_sizes(), batch_size=2, seed=0) as loader:
        assert sorted(np.concatenate(list(loader))[:, 0].tolist()) == [4, 14, 24, 34]


def test_read_timeout_travels_with_the_store(xy_store):
    from daskfeed.inputs import DEFAULT_READ_TIMEOUT, store_read_timeout, zarr_behind

    arrays = daskfeed.open_zarr(xy_store, read_timeout=5)
    assert store_read_timeout(zarr_behind(arrays["x"]).store) == (5.0, True)
    group = zarr.open_group(xy_store, mode="r")  # opened with zarr: the default bound
    assert store_read_timeout(group.store) == (DEFAULT_READ_TIMEOUT, False)
    daskfeed.open_zarr(group, read_timeout=None)  # handed to open_zarr: its read_timeout, None waits forever
    assert store_read_timeout(group["x"].store) == (None, True)
    with pytest.raises(
        daskfeed.InputError, match=r"read_timeout must be a positive number of seconds or None \(wait forever\), got -1"
    ):
        daskfeed.open_zarr(xy_store, read_timeout=-1)
    with pytest.raises(daskfeed.InputTypeError, match=r"read_timeout must be a number of seconds or None, got str"):
        daskfeed.open_zarr(xy_store, read_timeout="5")


@pytest.mark.slow
def test_open_zarr_without_the_package_a_protocol_needs_says_which_first():
    """Run where s3fs cannot be imported (a fresh process: this one may have fsspec's s3 class loaded)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "import daskfeed\n"
        "try:\n"
        "    daskfeed.open_zarr('s3://bucket/train.zarr')\n"
        "except daskfeed.StoreError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("s3:// URLs need the s3fs package: pip install s3fs"), out.stdout + out.stderr
    with pytest.raises(daskfeed.StoreError, match=r"fsspec knows no protocol 'nosuch'"):
        daskfeed.open_zarr("nosuch://bucket/train.zarr")


def test_errors_are_builtin_errors_too():
    assert issubclass(daskfeed.InputError, ValueError) and issubclass(daskfeed.InputTypeError, TypeError)
    assert issubclass(daskfeed.ChunkReadError, RuntimeError) and issubclass(daskfeed.MemoryBudgetError, ValueError)


def test_open_zarr_gives_one_block_per_zarr_chunk_on_every_axis(tmp_path):
    """A single array's path opens as one dask array whose blocks are its zarr chunks, the ragged ones too."""
    data = np.arange(7 * 5, dtype="i4").reshape(7, 5)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(3, 2))
    a = daskfeed.open_zarr(tmp_path / "a.zarr")
    assert isinstance(a, da.Array) and a.chunks == ((3, 3, 1), (2, 2, 1))
    np.testing.assert_array_equal(a.compute(), data)


@pytest.mark.slow
def test_a_remote_store_that_stops_answering_fails_with_the_chunk_named(tmp_path):
    """An HTTP server on 127.0.0.1 that stops answering chunk requests (it does not close them)."""
    pytest.importorskip("aiohttp")
    import functools
    import http.server
    import socketserver
    import threading

    stalled, release = threading.Event(), threading.Event()

    class Stalling(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if stalled.is_set() and "/c/" in self.path:
                release.wait(120)  # the server hangs: no answer, no error, the socket stays open
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    write_store(tmp_path / "r.zarr", {"x": np.arange(300, dtype="i4").reshape(100, 3)}, {"x": 30})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(Stalling, directory=str(tmp_path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        x = daskfeed.open_zarr(f"http://127.0.0.1:{server.server_address[1]}/r.zarr/x", read_timeout=1)
        stalled.set()
        with (
            daskfeed.Loader(x, batch_size=10, seed=0) as loader,
            pytest.raises(daskfeed.ChunkReadError, match=r"reading array x chunk \d+") as info,
        ):
            loader.batch(0)
        chain, err = [], info.value
        while err is not None:
            chain.append(type(err).__name__)
            err = err.__cause__ or err.__context__
        assert any("Timeout" in name for name in chain), chain
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_group_with_one_array_zarr_cannot_parse_opens_the_others_and_names_it(tmp_path):
    import json

    store = write_store(tmp_path / "g.zarr", {"x": np.zeros((10, 2), "f4"), "y": np.arange(10)}, {"x": 5, "y": 5})
    meta = tmp_path / "g.zarr" / "y" / "zarr.json"
    broken = json.loads(meta.read_text())
    broken["data_type"] = "nonsense"
    meta.write_text(json.dumps(broken))
    with pytest.warns(daskfeed.DaskfeedWarning, match=r"member 'y' cannot be opened and is left out \(ValueError"):
        arrays = daskfeed.open_zarr(store)
    assert sorted(arrays) == ["x"] and arrays["x"].shape == (10, 2)

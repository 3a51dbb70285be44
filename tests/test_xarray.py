"""xarray stores as users have them: a ``Dataset.to_zarr`` store with time / lat / lon coordinates, through
``daskfeed info``, ``daskfeed ingest`` (from the command line and from Python) and a loader."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import daskfeed
from daskfeed.cli import main
from daskfeed.errors import InputTypeError

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")

START = np.datetime64("2000-01-01", "D")
LAT, LON = 6, 5


def day_of(times) -> np.ndarray:
    """The day number of each time, counted from ``START``."""
    return ((np.asarray(times, dtype="datetime64[ns]") - START) // np.timedelta64(1, "D")).astype(np.int64)


def climate(n: int, *, order=None, side: int | None = None) -> xr.Dataset:
    """``n`` daily samples: ``images`` (time, lat, lon) whose values encode the day and the grid cell, and
    ``labels`` (time) = day // (n / 10), sorted along time unless ``order`` permutes the samples."""
    lat_n, lon_n = (side, side) if side else (LAT, LON)
    days = np.arange(n) if order is None else np.asarray(order)
    cell = 10 * np.arange(lat_n)[:, None] + np.arange(lon_n)[None, :]
    images = (100 * days[:, None, None] + cell[None]).astype("float32")
    labels = (days * 10 // n).astype("int64")
    ds = xr.Dataset(
        {
            "images": (("time", "lat", "lon"), images, {"units": "K", "long_name": "temperature"}),
            "labels": (("time",), labels),
        },
        coords={
            "time": START + days.astype("timedelta64[D]"),
            "lat": ("lat", np.linspace(-10.0, 10.0, lat_n), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0.0, 40.0, lon_n), {"units": "degrees_east"}),
        },
    )
    return ds


def check_paired(out: xr.Dataset, n: int) -> None:
    """Every sample of ``out`` still sits with its own time: its values encode the day its time says."""
    days = day_of(out["time"].values)
    cell = 10 * np.arange(out.sizes["lat"])[:, None] + np.arange(out.sizes["lon"])[None, :]
    np.testing.assert_array_equal(out["images"].values, 100 * days[:, None, None] + cell[None])
    np.testing.assert_array_equal(out["labels"].values, days * 10 // n)


def write(ds: xr.Dataset, path) -> str:
    """``ds.to_zarr(path)``, as users write it (zarr 3 warns that consolidated metadata is not in its spec)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), mode="w")
    return str(path)


@pytest.fixture
def coords_store(tmp_path):
    """600 daily samples written by ``xarray.Dataset.to_zarr`` (numpy-backed: zarr's default chunks)."""
    ds = climate(600)
    return write(ds, tmp_path / "coords.zarr"), ds


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_shows_variables_and_coordinates_apart(coords_store, capsys):
    path, _ds = coords_store
    code, out, err = run(capsys, "info", path)
    assert code == 0, err
    lines = out.splitlines()
    variables = next(i for i, line in enumerate(lines) if line.split()[:2] == ["variable", "dims"])
    coordinates = next(i for i, line in enumerate(lines) if line.split()[:2] == ["coordinate", "dims"])
    assert variables < coordinates
    rows = {line.split()[0]: i for i, line in enumerate(lines) if line.startswith("  ") and line.split()}
    assert variables < rows["images"] < coordinates and variables < rows["labels"] < coordinates
    assert all(rows[c] > coordinates for c in ("time", "lat", "lon"))
    assert "(time, lat, lon)" in lines[rows["images"]] and "(time)" in lines[rows["time"]]
    assert (
        "xarray dataset, samples along 'time': a loader reads images, labels; coordinate time goes with its samples "
        "(ingest --shuffle shuffles it too); lat, lon (along other dimensions) are kept as they are"
    ) in out
    assert "differ in length" not in out  # lat and lon are not arrays of the samples


def test_info_json_names_the_dataset_roles(coords_store, capsys):
    path, _ds = coords_store
    code, out, _ = run(capsys, "info", path, "--json")
    assert code == 0
    report = json.loads(out)
    roles = {a["name"]: a["role"] for a in report["arrays"]}
    assert roles == {"images": "variable", "labels": "variable"} | dict.fromkeys(("lat", "lon", "time"), "coordinate")
    assert report["dataset"]["sample_dim"] == "time"


def test_cli_ingest_shuffle_keeps_each_sample_with_its_time(coords_store, tmp_path, capsys):
    path, ds = coords_store
    dest = tmp_path / "out.zarr"
    code, out, err = run(capsys, "ingest", path, dest, "--shuffle", "--seed", 5, "--chunk-length", 64)
    assert code == 0, err
    assert "images (time, lat, lon): (600, 6, 5) float32" in out
    assert "lat (lat): (6,) float64, kept as it is (not along the samples)" in out
    assert "xarray.open_zarr opens it with its coordinates" in out
    out_ds = xr.open_zarr(str(dest))
    assert set(out_ds.coords) == {"time", "lat", "lon"} and set(out_ds.data_vars) == {"images", "labels"}
    assert out_ds["time"].dtype == np.dtype("datetime64[ns]")
    assert out_ds["images"].dims == ("time", "lat", "lon") and out_ds["images"].chunks[0][0] == 64
    days = day_of(out_ds["time"].values)
    assert not np.array_equal(days, np.arange(600))  # shuffled ...
    np.testing.assert_array_equal(np.sort(days), np.arange(600))  # ... every time once
    check_paired(out_ds, 600)  # ... and each sample with its own time
    np.testing.assert_array_equal(out_ds["lat"].values, ds["lat"].values)  # other dimensions as they were
    np.testing.assert_array_equal(out_ds["lon"].values, ds["lon"].values)
    assert out_ds["images"].attrs["units"] == "K" and out_ds["lat"].attrs["units"] == "degrees_north"
    xr.testing.assert_equal(out_ds.sortby("time").load(), ds)


def test_cli_ingest_in_order_is_the_same_dataset(coords_store, tmp_path, capsys):
    path, ds = coords_store
    code, _, err = run(capsys, "ingest", path, tmp_path / "same.zarr", "--quiet")
    assert code == 0, err
    xr.testing.assert_equal(xr.open_zarr(str(tmp_path / "same.zarr")).load(), ds)


def test_python_ingest_of_a_dataset_keeps_its_coordinates(tmp_path):
    ds = climate(500).chunk({"time": 70})  # dask-backed, as xr.open_dataset(..., chunks=...) gives
    report = daskfeed.ingest(ds, tmp_path / "py.zarr", shuffle=True, seed=2, chunk_length=50, progress=False)
    assert report.kept == ("lat", "lon") and report.dims["images"] == ("time", "lat", "lon")
    out_ds = xr.open_zarr(str(tmp_path / "py.zarr"))
    assert set(out_ds.coords) == {"time", "lat", "lon"}
    check_paired(out_ds, 500)
    assert not np.array_equal(day_of(out_ds["time"].values), np.arange(500))
    xr.testing.assert_equal(out_ds.sortby("time").load(), ds.load())


def test_python_ingest_of_an_opened_store_keeps_its_coordinates(coords_store, tmp_path):
    path, ds = coords_store
    daskfeed.ingest(xr.open_zarr(path), tmp_path / "again.zarr", progress=False)
    xr.testing.assert_equal(xr.open_zarr(str(tmp_path / "again.zarr")).load(), ds)


@pytest.mark.parametrize("role", ["x", "y"])
def test_a_dataset_as_x_or_y_is_refused_naming_its_variables(coords_store, role):
    path, _ds = coords_store
    opened = xr.open_zarr(path)
    arrays = {"x": opened["images"], "y": opened["labels"]} | {role: opened}
    with pytest.raises(InputTypeError) as caught:
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=10)
    assert isinstance(caught.value, TypeError)
    message = str(caught.value)
    assert f"{role} is an xarray.Dataset (data variables 'images', 'labels')" in message
    assert 'x=ds["images"], y=ds["labels"]' in message  # the fix: the variables, by name


def test_quickstart_on_the_ingested_store_serves_samples_with_their_labels(coords_store, tmp_path, capsys):
    """The README's quickstart, on what ``daskfeed ingest --shuffle`` made of an xarray store."""
    path, _ds = coords_store
    assert run(capsys, "ingest", path, tmp_path / "train.zarr", "--shuffle", "--quiet")[0] == 0
    arrays = daskfeed.open_zarr(str(tmp_path / "train.zarr"))
    seen = []
    with daskfeed.Loader(arrays["images"], arrays["labels"], batch_size=32, seed=0) as loader:
        for x, y in loader:
            np.testing.assert_array_equal(x[:, 0, 0].astype(np.int64) // 100 * 10 // 600, y)
            seen.append(x[:, 0, 0])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)) // 100, np.arange(600))
    # xarray's own view of the store feeds a loader too, by its DataArrays
    opened = xr.open_zarr(str(tmp_path / "train.zarr"))
    with daskfeed.Loader(opened["images"], opened["labels"], batch_size=100, seed=1) as loader:
        assert sum(len(y) for _x, y in loader) == 600


def _chunked_store(tmp_path, name: str, order=None) -> str:
    """2,000 samples of 16x16 float32 in chunks of 100, labels in ONE chunk (dask's and xarray's default for a
    small array), written by xarray from dask arrays."""
    ds = climate(2000, order=order, side=16).chunk({"time": 100})
    ds["labels"] = ds["labels"].chunk({"time": -1})
    return write(ds, tmp_path / name)


def test_info_warns_about_sorted_labels_held_in_one_chunk(tmp_path, capsys):
    import zarr

    path = _chunked_store(tmp_path, "sorted.zarr")
    assert zarr.open_array(f"{path}/labels", mode="r").chunks == (2000,)  # one chunk indeed
    code, out, _ = run(capsys, "info", path, "--memory-budget", "400KB")
    assert code == 0
    assert "labels 'labels': grouping 1.00" in out
    assert "labels 'labels' look sorted or grouped along the sample axis (grouping 1.00" in out
    assert "pass reads_per_chunk=1" not in out  # sorted: one read per chunk would not mix them
    assert "daskfeed ingest" in out and "--shuffle" in out


def test_info_and_the_loader_read_a_store_in_random_order_once_per_chunk(tmp_path, capsys):
    """Labels in one chunk, in random order: info measures them mixed at the loader's read units, and the
    loader's reads_per_chunk="auto" takes one read per chunk on the same measure: no warning, no rewrite."""
    order = np.random.default_rng(0).permutation(2000)
    path = _chunked_store(tmp_path, "mixed.zarr", order=order)
    code, out, _ = run(capsys, "info", path, "--memory-budget", "1MB")
    assert code == 0
    assert "labels 'labels': grouping 0.00" in out
    assert "look sorted" not in out and "the data it serves" not in out
    assert "labels held whole; reads_per_chunk=1," in out
    arrays = daskfeed.open_zarr(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskfeed.LayoutWarning)
        auto = daskfeed.Loader(arrays["images"], arrays["labels"], batch_size=32, memory_budget="1MB", seed=0)
    with auto:
        assert auto.reads_per_chunk == 1 and auto.layout.amplification <= 1.05
        assert auto.layout.label_grouping["y"] < 0.05 and "labels are mixed already" in auto.layout.reason
        assert sum(len(y) for _x, y in auto) == 2000


def test_a_coordinate_along_time_that_is_not_its_index_goes_with_its_samples(tmp_path):
    """``doy`` (time) is a coordinate by xarray's ``coordinates`` attribute, ``height`` a scalar one."""
    ds = climate(120).assign_coords(doy=("time", np.arange(120) + 1000), height=2.0)
    path = write(ds, tmp_path / "nd.zarr")
    daskfeed.ingest(path, tmp_path / "out.zarr", shuffle=True, seed=3, chunk_length=25, progress=False)
    out_ds = xr.open_zarr(str(tmp_path / "out.zarr"))
    assert set(out_ds.coords) == {"time", "lat", "lon", "doy", "height"}
    assert set(out_ds.data_vars) == {"images", "labels"}
    np.testing.assert_array_equal(out_ds["doy"].values - 1000, day_of(out_ds["time"].values))
    check_paired(out_ds, 120)
    assert float(out_ds["height"]) == 2.0


def test_a_coordinate_ingest_cannot_write_is_refused_with_the_way_round(tmp_path):
    ds = climate(40).assign_coords(station="abc")
    with pytest.raises(InputTypeError) as caught:
        daskfeed.ingest(ds, tmp_path / "out.zarr", progress=False)
    message = str(caught.value)
    assert "coordinate 'station' has dtype <U3, which ingest cannot write" in message
    assert "ds.drop_vars('station')" in message


@pytest.mark.slow
@pytest.mark.tf
def test_the_readme_quickstart_trains_on_an_ingested_xarray_store(coords_store, tmp_path, capsys):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    path, _ds = coords_store
    assert run(capsys, "ingest", path, tmp_path / "train.zarr", "--shuffle", "--seed", 0, "--quiet")[0] == 0
    arrays = daskfeed.open_zarr(str(tmp_path / "train.zarr"))
    seq = daskfeed.as_sequence(arrays["images"] / 6000.0, arrays["labels"], batch_size=32, seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((LAT, LON)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(seq, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert xr.open_zarr(str(tmp_path / "train.zarr"))["time"].size == 600  # the coordinates are still there


def test_a_dataset_as_x_suggests_the_field_as_input_and_the_integer_variable_as_label(tmp_path):
    """Variables not named like labels: the one integer per sample is the label, the largest variable the input
    (not the first by name, which would make the label the model's input)."""
    n = 40
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), np.zeros((n, 3, 4), "f4")),
            "season": (("time",), np.arange(n) % 4),
        },
        coords={"time": START + np.arange(n).astype("timedelta64[D]")},
    )
    with pytest.raises(InputTypeError, match=r'x=ds\["t2m"\], y=ds\["season"\]'):
        daskfeed.Loader(ds, batch_size=8)


def test_ingest_of_variables_by_path_says_their_coordinates_were_not_given(coords_store, tmp_path, capsys):
    path, _ds = coords_store
    dest = tmp_path / "by_path.zarr"
    code, out, err = run(capsys, "ingest", f"{path}/images", f"{path}/labels", dest, "--quiet")
    assert code == 0, err
    assert "opens it with its coordinates" not in out
    assert "xarray.open_zarr opens it with its dimension names but no coordinates: none was given" in out
    assert "time" not in xr.open_zarr(str(dest)).coords

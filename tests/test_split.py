"""daskfeed.split: seeded parts of the samples, disjoint and covering, every class in each part, through both doors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import daskfeed

pytestmark = pytest.mark.usefixtures("quiet_layout_warnings")


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """A store as users write it, sorted by label: 3,001 samples of 8 features in 10 classes (label = row //
    301), written with zarr.create_array; x chunked by 128 rows, y by 1,000 (unlike); feature 0 = row."""
    n = 3001
    x = np.random.default_rng(0).normal(size=(n, 8)).astype("f4")
    x[:, 0] = np.arange(n)
    y = np.arange(n) // 301
    path = str(tmp_path_factory.mktemp("sorted") / "s.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("x", data=x, chunks=(128, 8))
    group.create_array("y", data=y, chunks=(1000,))
    return path, x, y


def rows_of(loader):
    got = [(xb[:, 0].astype(int), yb) for xb, yb in loader]
    rows = np.concatenate([r for r, _ in got])
    for r, yb in got:
        np.testing.assert_array_equal(r // 301, yb)  # x and y stay aligned
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["1GiB", "30KB"])  # resident, and streaming
def test_parts_are_disjoint_cover_every_sample_and_hold_every_class(sorted_store, budget):
    path, _, y = sorted_store
    arrays = daskfeed.open_zarr(path)
    parts = daskfeed.split((arrays["x"], arrays["y"]), [0.8, 0.1, 0.1], seed=7)
    assert [p.fraction for p in parts] == pytest.approx([0.8, 0.1, 0.1])
    served = []
    for part in parts:
        with daskfeed.Loader(part, batch_size=64, seed=1, memory_budget=budget) as loader:
            assert loader.layout.resident == (budget == "1GiB")
            epochs = [rows_of(loader) for _ in range(2)]
            assert loader.n_samples == len(epochs[0])
        assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist())  # the same part every epoch...
        assert epochs[0].tolist() != epochs[1].tolist()  # ...shuffled anew
        served.append(epochs[0])
    everything = np.concatenate(served)
    assert len(everything) == 3001 and sorted(everything.tolist()) == list(range(3001))  # disjoint and covering
    for part, rows in zip(parts, served):
        assert set((rows // 301).tolist()) == set(range(10))  # every class in every part, on a sorted store
        assert abs(len(rows) - part.fraction * 3001) <= 24  # within a sample per chunk of the fraction
    # A positional split would have given the last part class 9 only.
    assert set(y[-290:].tolist()) == {9}


def test_a_split_is_seeded_and_each_part_keeps_the_fast_read_path(sorted_store):
    path, _, _ = sorted_store
    arrays = daskfeed.open_zarr(path)
    first = daskfeed.split((arrays["x"], arrays["y"]), [0.9, 0.1], seed=3)
    again = daskfeed.split((arrays["x"], arrays["y"]), [0.9, 0.1], seed=3)
    other = daskfeed.split((arrays["x"], arrays["y"]), [0.9, 0.1], seed=4)
    val = [set(rows_of(daskfeed.Loader(p[1], batch_size=64, seed=0)).tolist()) for p in (first, again, other)]
    assert val[0] == val[1] and val[0] != val[2]
    with daskfeed.Loader(first[0], batch_size=64, seed=0, memory_budget="30KB", reads_per_chunk=1) as train:
        # The arrays are read as they are: the same read units as a loader over all of them, no dask slicing.
        whole = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=64, seed=0, memory_budget="30KB")
        assert train.layout.n_units == whole.layout.n_units == 24 and train.inputs.leaves[0].array is arrays["x"]
        whole.close()


@pytest.mark.slow
@pytest.mark.tf
def test_parts_through_both_doors_and_a_keras_fit_with_validation_data(sorted_store):
    keras = pytest.importorskip("keras")
    path, _, _ = sorted_store
    arrays = daskfeed.open_zarr(path)
    train, val = daskfeed.split((arrays["x"], arrays["y"]), [0.9, 0.1], seed=0)
    with daskfeed.Loader(val, batch_size=50, seed=2, shuffle=False) as loader:
        expected = rows_of(loader)
    ds = daskfeed.as_dataset(val, batch_size=50, seed=2, shuffle=False)
    got = np.concatenate([xb.numpy()[:, 0].astype(int) for xb, _ in ds])
    np.testing.assert_array_equal(got, expected)
    seq = daskfeed.as_sequence(train, batch_size=64, seed=0, memory_budget="30KB")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(seq, validation_data=ds, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])
    seq.close()


def test_windows_are_split_whole_and_a_parts_state_restores_only_into_that_part(sorted_store):
    path, _, _ = sorted_store
    arrays = daskfeed.open_zarr(path)
    parts = daskfeed.split((arrays["x"], arrays["y"]), [0.7, 0.3], seed=1)
    kwargs = dict(batch_size=32, seed=0, window={0: 20}, stride={0: 3}, memory_budget="60KB")
    starts = []
    for part in parts:
        with daskfeed.Loader(part, **kwargs) as loader:
            for xb, _ in loader:
                np.testing.assert_array_equal(xb[:, :, 0], xb[:, :1, 0] + np.arange(20))  # whole windows
                starts += xb[:, 0, 0].astype(int).tolist()
    assert sorted(starts) == list(range(0, 3001 - 20 + 1, 3))
    a, b = (daskfeed.Loader(p, batch_size=32, seed=0) for p in parts)
    with pytest.raises(daskfeed.InputError, match="state was taken from a loader over other data"):
        b.restore(json.loads(json.dumps(a.state())))
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("fractions", "error", "match"),
    [
        ([0.9, 0.2], daskfeed.InputError, "fractions must add up to 1"),
        ([1.0], daskfeed.InputError, "at least two parts"),
        ([0.5, 0.0, 0.5], daskfeed.InputError, r"must each be > 0"),
        ("0.9", daskfeed.InputTypeError, "fractions must be a list"),
        ([0.5, "a"], daskfeed.InputTypeError, "fractions must be numbers"),
    ],
)
def test_bad_fractions_are_named(fractions, error, match):
    with pytest.raises(error, match=match):
        daskfeed.split((np.zeros((10, 2)), np.zeros(10)), fractions)


def test_a_part_goes_alone_and_numpy_parts_split_too():
    x, y = np.arange(1000.0)[:, None], np.arange(1000) // 100
    train, val = daskfeed.split((x, y), [0.75, 0.25], seed=0)
    with pytest.raises(daskfeed.InputError, match="pass the part alone"):
        daskfeed.Loader(train, y)
    with daskfeed.Loader(train, batch_size=100) as a, daskfeed.Loader(val, batch_size=100) as b:
        rows = [np.concatenate([xb[:, 0] for xb, _ in loader]).astype(int) for loader in (a, b)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(1000))
    assert set((rows[1] // 100).tolist()) == set(range(10))

"""transform=: per-batch numpy transforms on daskfeed's threads, seeded by (seed, epoch, batch), through both doors."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
from conftest import write_store

import daskfeed

pytestmark = pytest.mark.usefixtures("quiet_layout_warnings")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """203 images of 6x6x1 (pixel = row number), labels = row number, chunks of 40 and 50."""
    n = 203
    x = np.broadcast_to(np.arange(n, dtype="f4")[:, None, None, None], (n, 6, 6, 1)).copy()
    y = np.arange(n)
    return write_store(tmp_path_factory.mktemp("t") / "t.zarr", {"x": x, "y": y}, {"x": 40, "y": 50})


def noisy(batch, rng):
    """Adds noise drawn from rng and records the thread it ran on."""
    x, y = batch
    noisy.threads.add(threading.current_thread().name)
    return x + rng.normal(size=x.shape).astype(x.dtype), y


noisy.threads = set()


def epoch_of(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def test_transform_runs_on_daskfeed_threads_same_seed_same_batches_new_each_epoch(store):
    arrays = daskfeed.open_zarr(store)
    kwargs = dict(batch_size=16, seed=3, memory_budget="20KB", transform=noisy)
    noisy.threads.clear()
    with (
        daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as a,
        daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as b,
    ):
        first, again = epoch_of(a), epoch_of(b)
        second = epoch_of(a)
    assert noisy.threads and all(name.startswith("daskfeed-") for name in noisy.threads), noisy.threads
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for x, y in first:  # the noise is on the right rows, and is noise
        assert 0 < np.abs(x - y[:, None, None, None]).mean() < 2
    # Epoch 1 draws other noise (and another order): no sample has the values it had in epoch 0.
    by_row = {int(r): xs[i] for xs, ys in first for i, r in enumerate(ys)}
    assert not any(np.array_equal(by_row[int(r)], xs[i]) for xs, ys in second for i, r in enumerate(ys))
    # Without the transform, the same loader knobs serve the same rows: the transform does not move the plan.
    with daskfeed.Loader(arrays["x"], arrays["y"], **{**kwargs, "transform": None}) as plain:
        assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in first]


def test_batch_i_is_the_same_asked_in_order_out_of_order_or_iterated(store):
    arrays = daskfeed.open_zarr(store)
    kwargs = dict(batch_size=16, seed=5, memory_budget="20KB", transform=noisy)
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as ld:
        iterated = epoch_of(ld)
        in_order = [ld.batch(i, 0) for i in range(len(ld))]  # made ahead on daskfeed-transform threads
        backwards = [ld.batch(i, 0) for i in reversed(range(len(ld)))][::-1]
    for a, b, c in zip(iterated, in_order, backwards):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(b[0], c[0])


def test_an_error_in_the_transform_names_the_batch_and_chains_the_cause(store):
    arrays = daskfeed.open_zarr(store)

    def fails_on_batch_3(batch, rng):
        if 48 <= batch[1].min() < 64 or fails_on_batch_3.calls == 3:
            raise ZeroDivisionError("boom")
        fails_on_batch_3.calls += 1
        return batch

    fails_on_batch_3.calls = 0
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=16, shuffle=False, transform=fails_on_batch_3) as ld:
        with pytest.raises(
            daskfeed.DaskfeedError, match=r"transform raised ZeroDivisionError on batch 3 of epoch 0: boom"
        ) as info:
            list(ld)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        with pytest.raises(daskfeed.DaskfeedError, match="on batch 3 of epoch 0") as info:
            ld.batch(3, 0)
        assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (
            lambda batch, rng: batch[0],
            r"transform returned ndarray for batch 0 of epoch 0, expected a tuple \('x', 'y'\)",
        ),
        (lambda batch, rng: (batch[0], {"y": batch[1]}), "transform returned a dict as y for batch 0 of epoch 0"),
        (lambda batch, rng: (batch[0], batch[1], batch[1]), "expected a tuple"),
    ],
)
def test_a_transform_that_returns_another_structure_is_refused(store, bad, match):
    arrays = daskfeed.open_zarr(store)
    ld = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=16, seed=0, transform=bad)
    with pytest.raises(daskfeed.DaskfeedError, match=match):
        ld.batch(0)
    ld.close()


def test_dicts_keep_their_keys_and_a_bad_transform_knob_is_a_type_error(store):
    arrays = daskfeed.open_zarr(store)

    def scale(batch, rng):
        x, y = batch
        return {"image": x["image"] * 2}, y

    with daskfeed.Loader({"image": arrays["x"]}, arrays["y"], batch_size=16, seed=0, transform=scale) as ld:
        x, y = ld.batch(0)
        np.testing.assert_array_equal(x["image"][:, 0, 0, 0], 2 * y)
    with pytest.raises(daskfeed.InputTypeError, match="transform must be a function transform"):
        daskfeed.Loader(arrays["x"], arrays["y"], transform="flip")


def crop(batch, rng):
    """A random 4x4 crop, the same for the whole batch: shapes change, and as_dataset's element spec follows."""
    x, y = batch
    i, j = rng.integers(0, 3, size=2)
    return x[:, i : i + 4, j : j + 4, :], y


@pytest.mark.tf
def test_as_dataset_serves_the_transformed_batches_and_its_element_spec_follows(store):
    tf = pytest.importorskip("tensorflow")
    arrays = daskfeed.open_zarr(store)
    kwargs = dict(batch_size=16, seed=1, memory_budget="20KB", transform=crop)
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as ld:
        expected = [ld.batch(i, 0) for i in range(len(ld))]
    ds = daskfeed.as_dataset(arrays["x"], arrays["y"], **kwargs)
    assert ds.element_spec[0].shape.as_list() == [None, 4, 4, 1] and int(ds.cardinality()) == len(expected)
    got = [(a.numpy(), b.numpy()) for a, b in ds]
    assert len(got) == len(expected)
    for (xa, ya), (xb, yb) in zip(got, expected):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Graph mode, as fit consumes it: every sample once per epoch, epoch after epoch.
    count = ds.reduce(tf.constant(0, tf.int64), lambda c, b: c + tf.shape(b[1], out_type=tf.int64)[0])
    assert int(count) == 203


@pytest.mark.slow
@pytest.mark.tf
def test_as_dataset_names_a_batch_whose_shape_differs_from_batch_0(store):
    arrays = daskfeed.open_zarr(store)

    def grows(batch, rng):
        x, y = batch
        return (x[:, :5] if y.min() == 0 else x), y

    tf = pytest.importorskip("tensorflow")
    ds = daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=16, shuffle=False, transform=grows)
    with pytest.raises(tf.errors.OpError, match="for batch 1 of epoch 0, but batch 0 had"):
        list(ds)  # TensorFlow's error, holding the text; the loader keeps daskfeed's
    assert isinstance(ds.loader.error, daskfeed.DaskfeedError)
    assert "transform returned a leaf of shape (16, 6, 6, 1)" in str(ds.loader.error)


@pytest.mark.tf
def test_as_sequence_trains_a_keras_model_with_a_random_flip(store):
    keras = pytest.importorskip("keras")
    arrays = daskfeed.open_zarr(store)
    seen = []

    def flip(batch, rng):
        x, y = batch
        seen.append((threading.current_thread().name, len(y)))
        flips = rng.random(len(y)) < 0.5
        x = x.copy()
        x[flips] = x[flips, :, ::-1]
        return x, (y % 2).astype("f4")

    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=16, seed=0, memory_budget="20KB", transform=flip)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    seq.close()
    assert sum(n for _, n in seen) >= 2 * 203  # every sample of both epochs went through the transform
    assert all(name.startswith("daskfeed-transform") for name, _ in seen), seen  # never on Keras's threads


def test_random_lazy_dask_work_is_data_computed_once_when_it_fits_and_transform_is_not(store):
    """The README's warning, held: x.map_blocks(random noise) is computed once when the data fits the budget, so
    every epoch sees the same 'random' values; transform= draws new ones each epoch."""
    arrays = daskfeed.open_zarr(store)
    x = arrays["x"].map_blocks(lambda b: b + np.random.normal(size=b.shape).astype(b.dtype), dtype="f4")
    with daskfeed.Loader(x, arrays["y"], batch_size=16, seed=0) as lazy:
        assert lazy.layout.resident
        epochs = [{int(r): xs[i].copy() for xs, ys in lazy for i, r in enumerate(ys)} for _ in range(2)]
    assert all(np.array_equal(epochs[0][r], epochs[1][r]) for r in range(203))  # frozen
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=16, seed=0, transform=noisy) as ld:
        epochs = [{int(r): xs[i].copy() for xs, ys in ld for i, r in enumerate(ys)} for _ in range(2)]
    assert not any(np.array_equal(epochs[0][r], epochs[1][r]) for r in range(203))


def test_transform_over_numpy_and_dask_inputs(store):
    x = np.arange(50, dtype="f4")[:, None]
    for xs in (x, da.from_array(x, chunks=7)):
        with daskfeed.Loader(xs, batch_size=8, seed=0, transform=lambda b, rng: b * 10) as ld:
            assert sorted(np.concatenate(list(ld))[:, 0].tolist()) == [10.0 * i for i in range(50)]

"""On a label-sorted store with a 10% memory budget, the default trains as well as a full in-RAM shuffle,
on the layout ingest writes and on one as zarr's defaults write it."""

from __future__ import annotations

import pytest
from conftest import sorted_blobs, write_store

import daskfeed

pytestmark = [pytest.mark.slow, pytest.mark.tf]  # training runs: 20 s and more in all

keras = pytest.importorskip("keras")


def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def write_user_layout(path, x, y):
    """As zarr's defaults cut larger stores: few long chunks, split along the feature axis too, and labels
    chunked unlike the features (4 chunks of 4,000 x 8 features; labels by 3,000)."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", data=x, chunks=(4000, 8))
    group.create_array("y", data=y, chunks=(3000,))
    return str(path)


@pytest.fixture(scope="module", params=["chunks of 400", "user layout"])
def sorted_store(tmp_path_factory, request):
    x, y = sorted_blobs(16_000, seed=0)  # sorted by label: every chunk holds one label or a few
    folder = tmp_path_factory.mktemp("acc")
    if request.param == "chunks of 400":
        path = write_store(folder / "sorted.zarr", {"x": x, "y": y}, {"x": 400, "y": 400})
    else:
        path = write_user_layout(folder / "sorted.zarr", x, y)
    test = sorted_blobs(4_000, seed=1)
    return daskfeed.open_zarr(path), (x, y), test, (x.nbytes + y.nbytes) // 10


@pytest.fixture(scope="module")
def full_shuffle_accuracy(sorted_store):
    _, (x, y), (xt, yt), _ = sorted_store
    model = make_model()
    model.fit(x, y, batch_size=64, epochs=2, shuffle=True, verbose=0)
    return model.evaluate(xt, yt, verbose=0)[1]


def fit_accuracy(make_input, sorted_store, **kwargs):
    arrays, _, (xt, yt), budget = sorted_store
    model = make_model()
    data = make_input(arrays["x"], arrays["y"], batch_size=64, seed=0, memory_budget=budget, **kwargs)
    model.fit(data, epochs=2, shuffle=False, verbose=0)  # daskfeed shuffles; Keras's shuffle only reorders batches
    return model.evaluate(xt, yt, verbose=0)[1]


@pytest.mark.parametrize("door", ["as_sequence", "as_dataset"])
def test_default_reads_per_chunk_matches_a_full_shuffle(sorted_store, full_shuffle_accuracy, door):
    accuracy = fit_accuracy(getattr(daskfeed, door), sorted_store)
    assert full_shuffle_accuracy > 0.75
    assert accuracy >= full_shuffle_accuracy - 0.03, (accuracy, full_shuffle_accuracy)


# Only on chunks of 400: the user layout's chunks of 4,000 samples do not fit a window of this budget at one read,
# so there reads_per_chunk=1 has no plain chunk windows to show (the case always skipped).
@pytest.mark.parametrize("sorted_store", ["chunks of 400"], indirect=True)
def test_the_store_is_hard_plain_chunk_windows_fall_short(sorted_store, full_shuffle_accuracy):
    """Without reading chunks in parts, windows of one chunk or two cannot mix a sorted store."""
    arrays = sorted_store[0]
    assert len(arrays["x"].chunks[0]) == 40  # 40 chunks of 400, each of one label or two (sorted)
    accuracy = fit_accuracy(daskfeed.as_sequence, sorted_store, reads_per_chunk=1)
    assert accuracy < full_shuffle_accuracy - 0.2, (accuracy, full_shuffle_accuracy)

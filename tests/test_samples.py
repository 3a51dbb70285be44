"""Samples cut by window= and stride=: windows of a series against Keras's own, patches, both doors, the budget."""

from __future__ import annotations

import json
import random
import warnings
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pytest
from conftest import write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskfeed
from daskfeed.layout import SLOTS
from daskfeed.samples import RowMap, hold

pytestmark = pytest.mark.usefixtures("quiet_layout_warnings")


@pytest.fixture(scope="module")
def series_store(tmp_path_factory):
    """A (2003, 8) float32 series chunked by 200 (ragged, windows cross every boundary) and a target per step
    chunked by 250: y[t] = 7t mod 13 (not unique), so pairs are compared as a multiset."""
    n = 2003
    x = np.random.default_rng(0).normal(size=(n, 8)).astype("f4")
    y = (np.arange(n) * 7 % 13).astype("i8")
    path = write_store(tmp_path_factory.mktemp("series") / "s.zarr", {"x": x, "y": y}, {"x": 200, "y": 250})
    return path, x, y


def pairs(batches):
    """The (x, y) pairs of some batches, as a sorted list of bytes (a multiset)."""
    return sorted(a.tobytes() + b.tobytes() for xb, yb in batches for a, b in zip(xb, yb))


def keras_pairs(x, y, length, step):
    keras = pytest.importorskip("keras")
    ds = keras.utils.timeseries_dataset_from_array(x, y, sequence_length=length, sequence_stride=step, batch_size=4096)
    return pairs((a.numpy(), b.numpy()) for a, b in ds)


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize(("length", "step"), [(48, 1), (48, 5), (5, 5), (1, 1), (64, 64), (70, 3), (200, 31)])
@pytest.mark.parametrize("budget", ["1GiB", "80KB"])  # resident, and streaming (heads held up to 64 steps)
def test_series_windows_are_exactly_those_of_keras_timeseries_dataset_from_array(series_store, length, step, budget):
    path, x, y = series_store
    arrays = daskfeed.open_zarr(path)
    expected = keras_pairs(x, y, length, step)
    kwargs = dict(batch_size=32, seed=0, window={0: length}, stride={0: step}, memory_budget=budget)
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as loader:
        assert loader.layout.resident == (budget == "1GiB")
        assert loader.n_samples == len(expected) == (2003 - length) // step + 1
        assert not loader.layout.heads or 1 < length <= 64  # longer heads take more than their share: read again
        epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert all(xb.shape[1:] == (length, 8) and xb.dtype == np.float32 for xb, _ in batches)
        assert pairs(batches) == expected
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(*epochs))  # a new order each epoch


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize("reads", [1, 3])
def test_series_from_numpy_dask_and_zarr_and_at_several_reads_per_chunk(series_store, reads):
    path, x, y = series_store
    arrays = daskfeed.open_zarr(path)
    expected = keras_pairs(x, y, 30, 2)
    kwargs = dict(batch_size=50, seed=4, window={0: 30}, stride={0: 2}, reads_per_chunk=reads)
    sources = [(x, y), (da.from_array(x, chunks=(100, 8)) * 1, da.from_array(y, chunks=300)), (arrays["x"], y)]
    for xs, ys in sources:
        with daskfeed.Loader(xs, ys, memory_budget="80KB", **kwargs) as loader:
            assert pairs(loader) == expected


@pytest.mark.tf
def test_windows_longer_than_a_chunk_with_heads_too_large_to_hold_read_the_next_chunks(tmp_path):
    """Chunks of 10 rows and windows of 40: the heads are most of the array, more than the budget holds; each
    unit then reads its next chunks itself (decoding them again), and the samples are still exactly Keras's."""
    n = 500
    x = np.random.default_rng(1).normal(size=(n, 8)).astype("f4")
    y = np.arange(n)
    arrays = daskfeed.open_zarr(write_store(tmp_path / "s.zarr", {"x": x, "y": y}, {"x": 10, "y": 10}))
    kwargs = dict(batch_size=16, seed=0, window={0: 40}, stride={0: 1}, memory_budget="30KB")
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as ld:
        assert not ld.layout.resident and not ld.layout.heads and ld.layout.amplification > 2
        assert pairs(ld) == keras_pairs(x, y, 40, 1)


def counted(path):
    """x and y of a store read through a store that counts the reads of each chunk key, and the counts."""
    import zarr
    from test_loader import CountingStore

    counting = CountingStore(zarr.storage.LocalStore(path, read_only=True))
    group = zarr.open_group(counting, mode="r")
    return daskfeed.open_zarr(group["x"]), daskfeed.open_zarr(group["y"]), counting.counts


def test_each_chunk_is_read_once_per_epoch_with_windows_crossing_chunk_boundaries(series_store):
    """Chunks of 200 rows, windows of 48 every 5: 9 of every 40 windows cross into the next chunk. At one read per
    chunk each chunk of x is read once per epoch for its own windows; the rows windows reach into it from the
    chunk before (its first 47, the heads) are read once for the loader's life, on its first window."""
    path, _, _ = series_store
    xs, ys, counts = counted(path)
    kwargs = dict(batch_size=32, seed=0, window={0: 48}, stride={0: 5}, reads_per_chunk=1, memory_budget="80KB")
    loader = daskfeed.Loader(xs, ys, **kwargs)
    assert loader.layout.heads and not loader.layout.resident and loader.stats["read_units"] == 10
    epochs = 3
    for _ in range(epochs):
        assert sum(len(y) for _, y in loader) == loader.n_samples
    following = loader.plan(epochs)
    reachable = sum(len(following.reads_of(w)) for w in range(min(2, following.n_windows)))  # prefetch runs on
    loader.close()
    x_reads = {int(k.split("/")[2]): v for k, v in counts.items() if k.startswith("x/")}
    # Chunk 0 has no heads; chunks 1-9 hold windows' starts and heads; chunk 10 (rows 2000-2002) only heads.
    base = {c: epochs * (c < 10) + (c > 0) for c in range(11)}
    assert sorted(x_reads) == list(range(11))
    extra = {c: x_reads[c] - base[c] for c in x_reads}
    assert set(extra.values()) <= {0, 1} and sum(extra.values()) <= reachable, x_reads
    # Data that fits is decoded once, whatever the epochs: windows crossing chunks included.
    xs, ys, counts = counted(path)
    with daskfeed.Loader(xs, ys, **{**kwargs, "memory_budget": "1GiB"}) as resident:
        assert resident.layout.resident
        for _ in range(epochs):
            assert sum(len(y) for _, y in resident) == resident.n_samples
    assert len(counts) == 11 + 9 and set(counts.values()) == {1}, counts  # x's 11 chunks and y's 9, once each


def test_decode_amplification_of_windows_and_patches_is_one_at_one_read_per_chunk(series_store, image_store):
    path, _, _ = series_store
    x = daskfeed.open_zarr(path)["x"]
    with daskfeed.Loader(x, window={0: 48}, stride={0: 1}, reads_per_chunk=1, memory_budget="80KB") as series:
        # The last 3 rows are in no window's own chunk: only heads, read once.
        assert series.layout.heads and series.layout.amplification == pytest.approx(1.0, abs=0.01)
    images = daskfeed.open_zarr(image_store)["images"]
    with daskfeed.Loader(images, window={1: 4, 2: 6}, reads_per_chunk=1, memory_budget="60KB") as patches:
        assert not patches.layout.resident and patches.layout.amplification == pytest.approx(1.0)


@pytest.mark.tf
def test_both_doors_serve_the_loaders_batches_with_the_window_shape(series_store):
    tf = pytest.importorskip("tensorflow")
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=16, seed=3, window={0: 48}, stride={0: 4}, memory_budget="80KB")
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as loader:
        expected = [loader.batch(i) for i in range(len(loader))]
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **kwargs)
    assert len(seq) == len(expected)
    for i in (0, 3, len(seq) - 1):
        for got, want in zip(seq[i], expected[i]):
            np.testing.assert_array_equal(got, want)
    seq.close()
    ds = daskfeed.as_dataset(arrays["x"], arrays["y"], **kwargs)
    assert ds.element_spec[0].shape.as_list() == [None, 48, 8] and ds.element_spec[1].shape.as_list() == [None]
    for (xb, yb), (xw, yw) in zip(ds, expected):
        np.testing.assert_array_equal(xb.numpy(), xw)
        np.testing.assert_array_equal(yb.numpy(), yw)
    # Graph mode, as model.fit consumes it: every window once.
    count = ds.reduce(tf.constant(0, tf.int64), lambda c, b: c + tf.shape(b[0], out_type=tf.int64)[0])
    assert int(count) == (2003 - 48) // 4 + 1


def test_same_seed_same_batches_whatever_the_threads_and_order(series_store):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=20, seed=11, window={0: 48}, stride={0: 1}, memory_budget="80KB")
    reference = daskfeed.Loader(arrays["x"], arrays["y"], scheduler="synchronous", **kwargs)
    expected = [reference.batch(i) for i in range(len(reference))]
    loader = daskfeed.Loader(arrays["x"], arrays["y"], scheduler="threads", **kwargs)
    order = list(range(len(loader))) * 2
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(4) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.OrderWarning)
        got = list(pool.map(loader.batch, order))
    for i, (xb, yb) in zip(order, got):
        np.testing.assert_array_equal(xb, expected[i][0])
        np.testing.assert_array_equal(yb, expected[i][1])
    loader.close()
    reference.close()


@pytest.mark.tf
def test_shards_partition_the_windows_and_drop_remainder_drops_only_the_last_batch(series_store):
    path, x, y = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=16, seed=2, window={0: 48}, stride={0: 3}, memory_budget="80KB")
    shards = []
    for index in range(3):
        with daskfeed.Loader(arrays["x"], arrays["y"], shard=(index, 3), **kwargs) as shard:
            shards.append(list(shard))
    assert pairs(b for s in shards for b in s) == keras_pairs(x, y, 48, 3)
    with daskfeed.Loader(arrays["x"], arrays["y"], drop_remainder=True, **kwargs) as dropped:
        sizes = [len(b[1]) for b in dropped]
    assert set(sizes) == {16} and len(sizes) == ((2003 - 48) // 3 + 1) // 16


def test_state_and_restore_go_on_with_the_same_windows_and_refuse_another_window(series_store):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=16, seed=6, window={0: 48}, stride={0: 2}, memory_budget="80KB")
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as whole:
        expected = [y for _ in range(2) for _, y in whole]
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as first:
        served = [y for _, y in first]
        for _, y in first:
            served.append(y)
            if len(served) == len(first) + 5:
                break
        state = json.loads(json.dumps(first.state()))
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as again:
        again.restore(state)
        served += [y for _, y in again]
    assert len(served) == len(expected) and all(np.array_equal(a, b) for a, b in zip(served, expected))
    other = daskfeed.Loader(arrays["x"], arrays["y"], **{**kwargs, "stride": {0: 3}})
    with pytest.raises(daskfeed.InputError, match="state was taken from a loader over other data or with other"):
        other.restore(state)
    plain = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=16, seed=6, memory_budget="80KB")
    assert plain.fingerprint != daskfeed.Loader(arrays["x"], arrays["y"], **kwargs).fingerprint


@pytest.mark.parametrize("budget", ["80KB", "120KB"])
def test_the_budget_holds_raw_rows_not_a_row_per_window(series_store, budget):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=32, seed=1, window={0: 48}, stride={0: 1}, memory_budget=budget)
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as ld:
        for _ in ld:
            pass
        stats, layout = ld.stats, ld.layout
    assert not layout.resident and 0 < stats["peak_window_bytes"] <= daskfeed.parse_bytes(budget)
    # The 2003 x 8 float32 rows take 64 KB: windows of 48 steps every step, a row per sample, would take 48x that.
    x = daskfeed.open_zarr(path)["x"]
    with daskfeed.Loader(x, batch_size=32, seed=1, window={0: 48}, stride={0: 1}, memory_budget="300KB") as ld:
        assert ld.layout.resident and ld.n_samples == 1956
        assert ld.layout.held_bytes <= 300_000 < ld.n_samples * 48 * 32
        assert ld.batch(0).shape == (32, 48, 8)


def test_layout_counts_the_rows_a_window_holds(series_store):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=8, seed=0, window={0: 20}, stride={0: 3}, memory_budget="80KB")
    loader = daskfeed.Loader(arrays["x"], arrays["y"], **kwargs)
    layout, plan = loader.layout, loader.plan()
    assert layout.heads and 0 < layout.heads_bytes <= 0.25 * 80_000 and not layout.resident
    row = 32 + 8 * ("y" in layout.windowed)
    assert SLOTS * layout.window_rows * row + layout.held_bytes <= 80_000
    for w in range(plan.n_windows):
        assert plan.window_rows(w) <= max(layout.window_rows, int(plan.read_held[plan.reads_of(w)][0]))
    assert "windows of 20 rows every 3" in repr(loader) and f"{loader.n_samples} samples" in repr(loader)
    loader.close()


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    """37 images of 20x18 whose pixels say where they are (image, row, column), a mask of the same size that
    does too, a label per image and a per-image weight; images chunked by 5, masks by 7 (unlike)."""
    n = 37
    r, i, j = np.meshgrid(np.arange(n), np.arange(20), np.arange(18), indexing="ij")
    images = np.stack([r, i, j], axis=-1).astype("i2")
    masks = (r * 10_000 + i * 100 + j).astype("i4")
    labels = np.arange(n) * 3
    data = {"images": images, "masks": masks, "labels": labels, "weights": np.ones(n, "f4")}
    path = write_store(
        tmp_path_factory.mktemp("img") / "i.zarr", data, {"images": 5, "masks": 7, "labels": 10, "weights": 37}
    )
    return path


@pytest.mark.parametrize(("window", "stride"), [({1: 4, 2: 6}, None), ({1: 8, 2: 6}, {1: 3, 2: 2}), ({2: 5}, {2: 13})])
@pytest.mark.parametrize(("budget", "reads"), [("1GiB", 1), ("100KB", 1), ("100KB", 3), ("100KB", "auto")])
def test_patches_cut_every_array_with_the_axis_alike_and_serve_the_rest_per_image(
    image_store, window, stride, budget, reads
):
    a = daskfeed.open_zarr(image_store)
    kwargs = dict(batch_size=8, seed=0, window=window, stride=stride, memory_budget=budget, reads_per_chunk=reads)
    size = {1: 20, 2: 18}
    step = {axis: (stride or {}).get(axis, length) for axis, length in window.items()}
    counts = {axis: (size[axis] - window[axis]) // step[axis] + 1 for axis in window}
    shape = tuple(window.get(axis, size[axis]) for axis in (1, 2))
    with daskfeed.Loader(
        {"image": a["images"]}, {"mask": a["masks"], "label": a["labels"]}, a["weights"], **kwargs
    ) as ld:
        assert ld.layout.resident == (budget == "1GiB")
        assert ld.n_samples == 37 * int(np.prod(list(counts.values())))
        seen = []
        for x, y, w in ld:
            image, mask, label = x["image"], y["mask"], y["label"]
            assert image.shape[1:] == (*shape, 3) and mask.shape[1:] == shape and label.ndim == 1 and w.ndim == 1
            corner = image[:, 0, 0, :].astype(int)  # (image, row, column) of the patch's top-left pixel
            np.testing.assert_array_equal(corner[:, 0] * 3, label)  # the label of the patch's image
            rows, cols = np.arange(shape[0]), np.arange(shape[1])
            expected = corner[:, 0, None, None] * 10_000 + (corner[:, 1, None, None] + rows[:, None]) * 100
            np.testing.assert_array_equal(mask, expected + corner[:, 2, None, None] + cols)  # the patch under it
            np.testing.assert_array_equal(image[..., 1], corner[:, 1, None, None] + rows[:, None] + 0 * cols)
            seen += [tuple(c) for c in corner]
    grid = [
        (r, i, j)
        for r in range(37)
        for i in range(0, counts.get(1, 1) * step.get(1, 1), step.get(1, 1))
        for j in range(0, counts.get(2, 1) * step.get(2, 1), step.get(2, 1))
    ]
    assert sorted(seen) == sorted(grid)  # every patch of the stride grid, once


def test_series_and_patches_together(image_store):
    """window on axis 0 and axis 2: windows of 3 images, cut to columns; the label of the first image."""
    a = daskfeed.open_zarr(image_store)
    kwargs = dict(batch_size=8, seed=0, window={0: 3, 2: 6}, stride={0: 2, 2: 6}, memory_budget="100KB")
    with daskfeed.Loader(a["images"], a["labels"], **kwargs) as ld:
        seen = []
        for x, y in ld:
            assert x.shape[1:] == (3, 20, 6, 3)
            first = x[:, 0, 0, 0, :].astype(int)
            np.testing.assert_array_equal(x[:, :, 0, 0, 0], first[:, :1] + np.arange(3))
            np.testing.assert_array_equal(first[:, 0] * 3, y)
            seen += [tuple(c) for c in first]
    assert sorted(seen) == sorted((r, 0, j) for r in range(0, 35, 2) for j in (0, 6, 12))


@pytest.mark.parametrize(
    ("knobs", "error", "match"),
    [
        (dict(window={0: 3000}), daskfeed.InputError, r"window=\{0: 3000\} is longer than axis 0 of x \(2003 rows"),
        (dict(window={3: 2}), daskfeed.InputError, r"window=\{3: 2\} names axis 3, but x has no such axis"),
        (dict(window={1: 9}), daskfeed.InputError, r"window=\{1: 9\} is longer than axis 1 of x \(8 long"),
        (dict(window={0: 0}), daskfeed.InputError, r"window\[0\] must be >= 1"),
        (dict(window={-1: 3}), daskfeed.InputError, "window axes must be >= 0"),
        (dict(window={0: 2.5}), daskfeed.InputTypeError, r"window\[0\] must be an int"),
        (dict(window={"time": 3}), daskfeed.InputTypeError, "window keys must be axes"),
        (dict(window=48), daskfeed.InputTypeError, r"window must be a dict \{axis: a length\}"),
        (dict(window={}), daskfeed.InputError, "window must name at least one axis"),
        (dict(window={0: 8}, stride={0: 0}), daskfeed.InputError, r"stride\[0\] must be >= 1"),
        (dict(window={0: 8}, stride={0: True}), daskfeed.InputTypeError, r"stride\[0\] must be an int"),
        (dict(window={0: 8}, stride={1: 2}), daskfeed.InputError, r"stride=\{1: 2\} names axis 1, which window="),
        (dict(stride={0: 2}), daskfeed.InputError, r"stride=\{0: 2\} needs window"),
    ],
)
def test_bad_windows_are_input_errors_naming_the_knob(series_store, knobs, error, match):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    with pytest.raises(error, match=match):
        daskfeed.Loader(arrays["x"], arrays["y"], **knobs)


def test_a_budget_too_small_for_windows_names_the_budget_that_works(series_store):
    path, _, _ = series_store
    arrays = daskfeed.open_zarr(path)
    kwargs = dict(batch_size=16, seed=0, window={0: 48}, reads_per_chunk=1)
    with pytest.raises(daskfeed.MemoryBudgetError, match="rows that the samples starting in a chunk of x span") as info:
        daskfeed.Loader(arrays["x"], arrays["y"], memory_budget=2000, **kwargs)
    with daskfeed.Loader(arrays["x"], arrays["y"], memory_budget=info.value.smallest, **kwargs) as loader:
        assert sum(len(y) for _, y in loader) == (2003 - 48) // 48 + 1
        assert loader.stats["peak_window_bytes"] <= info.value.smallest


def test_hold_keeps_the_rows_kept_windows_span():
    rows, pos = hold(10, 30, np.array([10, 12, 20]), 3, whole=False)
    assert rows.tolist() == [0, 1, 2, 3, 4, 10, 11, 12] and pos.tolist() == [0, 2, 5]
    rows, pos = hold(10, 16, np.array([10, 13]), 3, whole=False)
    assert rows is None and pos.tolist() == [0, 3]


def test_row_maps_merge_touching_runs():
    runs = RowMap.of(np.array([0, 5, 20, 7]), np.array([5, 9, 22, 12]))
    assert runs.lo.tolist() == [0, 20] and runs.hi.tolist() == [12, 22] and runs.rows == 14
    assert runs(np.array([0, 11, 20, 21])).tolist() == [0, 11, 12, 13]


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(1, 120),
    step=st.integers(1, 40),
    chunk=st.integers(3, 200),
    batch_size=st.integers(1, 64),
    extra=st.integers(0, 20_000),
    reads=st.sampled_from([1, 2, "auto"]),
)
def test_any_window_stride_chunks_and_budget_serve_each_window_once(length, step, chunk, batch_size, extra, reads):
    n = 400
    x = np.repeat(np.arange(n, dtype="f4")[:, None], 2, axis=1)
    xs = da.from_array(x, chunks=(chunk, 2)) + 0
    kwargs = dict(batch_size=batch_size, seed=5, window={0: length}, stride={0: step}, reads_per_chunk=reads)
    with pytest.raises(daskfeed.MemoryBudgetError) as small:
        daskfeed.Loader(xs, np.arange(n), memory_budget=1, **kwargs)
    with daskfeed.Loader(xs, np.arange(n), memory_budget=small.value.smallest + extra, **kwargs) as loader:
        for epoch in (0, 1):
            got = [loader.batch(i, epoch) for i in range(len(loader))]
            starts = np.concatenate([y for _, y in got])
            assert np.array_equal(np.sort(starts), np.arange(0, n - length + 1, step)), epoch
            for xb, yb in got:
                np.testing.assert_array_equal(xb[:, :, 0], yb[:, None] + np.arange(length))
        assert loader.stats["peak_window_bytes"] <= small.value.smallest + extra


def test_windows_of_a_series_on_a_store_written_in_random_order_warn(tmp_path):
    """A newcomer who follows the general advice (ingest --shuffle) and then cuts windows of a series gets windows
    of unrelated rows: the loader says so. Patches (other axes) of such a store are fine."""
    series = np.arange(3000 * 4, dtype="f4").reshape(3000, 4)
    dest = str(tmp_path / "shuffled.zarr")
    daskfeed.ingest({"x": series, "y": np.arange(3000)}, dest, shuffle=True, seed=0, progress=False)
    arrays = daskfeed.open_zarr(dest)
    with pytest.warns(daskfeed.DaskfeedWarning, match=r"each window joins rows of unrelated samples"):
        daskfeed.Loader(arrays["x"], arrays["y"], window={0: 8}, seed=0).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskfeed.DaskfeedWarning)
        daskfeed.Loader(arrays["x"], arrays["y"], window={1: 2}, seed=0).close()


def test_the_rewrite_advice_for_windows_of_a_series_keeps_its_order(tmp_path):
    """The README's forecasting store (chunks of 4096 rows of 64 features) at a budget it does not fit: the
    advice to rewrite it must not shuffle the series."""
    x = np.random.default_rng(0).normal(size=(20000, 64)).astype("f4")
    path = write_store(tmp_path / "series.zarr", {"x": x, "y": x[:, 0].copy()}, {"x": 4096, "y": 4096})
    arrays = daskfeed.open_zarr(path)
    with pytest.warns(daskfeed.LayoutWarning) as caught:
        daskfeed.Loader(arrays["x"], arrays["y"], window={0: 48}, stride={0: 1}, memory_budget="4MB").close()
    advice = [str(w.message) for w in caught if "Rewrite" in str(w.message)]
    assert advice
    for text in advice:
        assert "not --shuffle: windows of a series need its rows in order" in text and "--shuffle --seed" not in text
    with pytest.warns(daskfeed.LayoutWarning) as caught:  # one sample per row: shuffling is the advice
        daskfeed.Loader(arrays["x"], arrays["y"], memory_budget="4MB").close()
    assert any("--shuffle --seed 0" in str(w.message) for w in caught)

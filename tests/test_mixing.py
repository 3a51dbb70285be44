"""Label mixing: reads_per_chunk="auto" measures the labels as info does, and spends no decode mixing a store
written in random order by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from test_loader import CountingStore

import daskfeed
from daskfeed.layout import choose_layout
from daskfeed.mixing import MIXED_GROUPING, grouping, label_grouping
from daskfeed.options import parse_bytes

N = 6000
CLASSES = 10
#: Labels (48 KB) are held whole; windows of ~1,525 samples hold ~3 of x's 12 chunks of 500: auto reads 4x.
BUDGET = "1MB"
KNOBS = dict(batch_size=64, seed=7, memory_budget=BUDGET)


def write(path, order: str, target: bool = False) -> str:
    """x: (N, 4, 4, 3) int32 whose every value is the sample's row; y: 10 classes, chunked unlike x (by 1,000),
    in random order, or sorted by label (and ``t``, the labels as floats: a regression target). Written with
    zarr by hand, not by ingest (no shuffled mark)."""
    y = np.random.default_rng(0).integers(0, CLASSES, N).astype("i8")
    if order == "sorted":
        y = np.sort(y)
    x = np.broadcast_to(np.arange(N, dtype="i4")[:, None, None, None], (N, 4, 4, 3)).copy()
    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", data=x, chunks=(500, 4, 4, 3))
    group.create_array("y", data=y, chunks=(1000,))
    if target:
        group.create_array("t", data=y.astype("f4") + np.float32(0.5), chunks=(1000,))
    return str(path)


def counted(path):
    store = CountingStore(zarr.storage.LocalStore(path, read_only=True))
    group = zarr.open_group(store, mode="r")
    t = daskfeed.open_zarr(group["t"]) if "t" in group else None
    return daskfeed.open_zarr(group["x"]), daskfeed.open_zarr(group["y"]), t, store.counts


def epoch(loader, y_all):
    """One epoch through the loader's loop: every sample once, each with its own label."""
    rows = []
    for x, y in loader:
        np.testing.assert_array_equal(y, y_all[x[:, 0, 0, 0]])
        rows.append(x[:, 0, 0, 0])
    rows = np.concatenate(rows)
    np.testing.assert_array_equal(np.sort(rows), np.arange(N))
    return rows


def test_a_store_in_random_order_by_hand_reads_each_chunk_once_and_does_not_warn(tmp_path):
    path = write(tmp_path / "mixed.zarr", "random")
    x, y, _t, counts = counted(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskfeed.LayoutWarning)
        loader = daskfeed.Loader(x, y, **KNOBS)
    with loader:
        layout = loader.layout
        assert not layout.resident and layout.held == ("y",)
        assert loader.reads_per_chunk == 1 and layout.amplification < 1.05
        assert layout.labels_mixed and layout.label_grouping["y"] <= MIXED_GROUPING
        assert "labels are mixed already" in layout.reason
        before = sum(v for k, v in counts.items() if k.startswith("x/"))
        assert before == 0  # measuring the labels reads no chunk of x
        epoch(loader, zarr.open_array(f"{path}/y", mode="r")[:])
        following = loader.plan(1)
        reachable = sum(len(following.reads_of(w)) for w in range(min(2, following.n_windows)))
    x_reads = {k: v for k, v in counts.items() if k.startswith("x/")}
    # Each of x's 12 chunks read once in the epoch; prefetch may have read a chunk of the next epoch's first
    # two windows once more.
    assert len(x_reads) == 12 and set(x_reads.values()) <= {1, 2}, x_reads
    assert sum(v - 1 for v in x_reads.values()) <= reachable
    # y's 6 chunks: read once to measure, once to be held.
    y_reads = {k: v for k, v in counts.items() if k.startswith("y/")}
    assert len(y_reads) == 6 and set(y_reads.values()) == {2}, y_reads


def test_the_same_data_sorted_by_label_still_reads_several_times_and_warns(tmp_path):
    path = write(tmp_path / "sorted.zarr", "sorted")
    x, y, _t, counts = counted(path)
    with pytest.warns(daskfeed.LayoutWarning, match="the data it serves") as caught:
        loader = daskfeed.Loader(x, y, **KNOBS)
    message = str(next(w for w in caught if "the data it serves" in str(w.message)).message)
    assert "Rewrite" in message and "shuffle" in message  # today's advice: rewrite in random order
    with loader:
        assert loader.reads_per_chunk > 1
        assert not loader.layout.labels_mixed and loader.layout.label_grouping["y"] > 0.9
        epoch(loader, np.sort(np.random.default_rng(0).integers(0, CLASSES, N)))
        reads = loader.reads_per_chunk
    x_reads = {k: v for k, v in counts.items() if k.startswith("x/")}
    assert len(x_reads) == 12 and min(x_reads.values()) >= reads  # each chunk decoded several times an epoch


@pytest.mark.parametrize("order", ["random", "sorted"])
def test_without_class_labels_auto_decides_as_before(tmp_path, order):
    """No y, or a float target: nothing to measure; the layout is the one auto chose before labels counted."""
    path = write(tmp_path / f"{order}.zarr", order, target=True)
    x, y, t, counts = counted(path)
    for target in (None, t, {"a": y, "t": t}):
        with pytest.warns(daskfeed.LayoutWarning, match="Rewrite"):
            loader = daskfeed.Loader(x, target, **KNOBS)
        with loader:
            expected = choose_layout(loader.inputs.leaves, N, loader.options)  # without a measure of labels
            assert loader.reads_per_chunk == expected.reads_per_chunk > 1
            assert loader.layout.label_grouping == {}
            if target is None:
                reference = daskfeed.Loader(x, reads_per_chunk=expected.reads_per_chunk, **KNOBS)
                with reference:
                    for i in (0, len(loader) - 1):  # the same batches as before
                        np.testing.assert_array_equal(loader.batch(i), reference.batch(i))
    assert not any(k.startswith("y/") or k.startswith("t/") for k in counts)  # no label read to measure


def test_info_and_the_loader_agree_on_the_grouping(tmp_path):
    for order in ("random", "sorted"):
        path = write(tmp_path / f"{order}.zarr", order)
        report = daskfeed.info(path, batch_size=64, memory_budget=BUDGET)
        arrays = daskfeed.open_zarr(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", daskfeed.LayoutWarning)
            loader = daskfeed.Loader(arrays["x"], arrays["y"], **KNOBS)
        with loader:
            assert loader.layout.label_grouping["y"] == report.label_grouping["y"]
            assert f"reads_per_chunk={loader.reads_per_chunk}," in report.loader  # info shows the loader's choice
        if order == "random":
            assert report.label_grouping["y"] < 0.05 and loader.reads_per_chunk == 1
            assert not any("the data it serves" in w or "sorted" in w for w in report.warnings), report.warnings
        else:
            assert report.label_grouping["y"] > 0.9 and loader.reads_per_chunk > 1
            said = next(w for w in report.warnings if "the data it serves" in w)
            assert "daskfeed ingest" in said and "--shuffle" in said


def test_chunks_too_large_for_a_window_on_mixed_labels_ask_for_budget_not_a_rewrite(tmp_path):
    """Mixed labels, but a chunk of x needs 3 reads to fit a window of 240 samples (auto would read 25x to mix
    a store it knew nothing of): the warning says more budget or smaller chunks, never a rewrite."""
    path = write(tmp_path / "mixed.zarr", "random")
    arrays = daskfeed.open_zarr(path)
    with pytest.warns(daskfeed.LayoutWarning, match="the data it serves") as caught:
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=64, seed=0, memory_budget="150KB")
    message = str(next(w for w in caught if "the data it serves" in str(w.message)).message)
    with loader:
        assert loader.reads_per_chunk == 3 and loader.layout.labels_mixed
        assert "larger than a window" in loader.layout.reason
    assert "labels are mixed already" in message and "no rewrite in random order is needed" in message
    assert "Rewrite" not in message and "ingest" not in message and "shuffle" not in message
    budget = parse_bytes(message.split("memory_budget of ")[1].split(" or more")[0])
    with warnings.catch_warnings(record=True) as caught:  # chunks large beside this budget still draw a word
        warnings.simplefilter("always")
        enough = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=64, seed=0, memory_budget=budget)
    assert not any("the data it serves" in str(w.message) for w in caught)
    with enough:
        assert enough.reads_per_chunk == 1  # the budget it names does read each chunk once


def test_the_measure_is_zero_for_a_random_order_and_one_for_units_of_one_class():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 20_000)
    bounds = np.arange(0, 20_001, 500)
    assert label_grouping(labels, bounds) < 0.05
    assert label_grouping(np.sort(labels), bounds) > 0.95
    assert label_grouping(np.arange(20_000), bounds) is None  # an index, not classes
    assert label_grouping(labels, np.array([0, 20_000])) is None  # one unit: nothing to compare
    assert grouping([np.zeros(10, int), np.zeros(10, int)]) is None  # one class
    # Half of each unit from one class, half at random: in between.
    half = np.where(np.arange(20_000) % 2 == 0, np.repeat(np.arange(40) % 5, 500), labels)
    assert 0.3 < label_grouping(half, bounds) < 0.7

"""The read layout: units from the heaviest array, small arrays held whole, data that fits held, reads per chunk."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskfeed import LoaderOptions, MemoryBudgetError
from daskfeed.layout import HELD_FRACTION, MAX_AUTO_READS, SLOTS, ArraySpec, choose_layout
from daskfeed.mixing import MIXED_GROUPING


def chunked(name, bytes_per_sample, n, chunk):
    return ArraySpec(name, bytes_per_sample, np.unique(np.append(np.arange(0, n, chunk), n)).astype(np.int64))


def layout(arrays, n, **knobs):
    knobs.setdefault("seed", 0)
    return choose_layout(arrays, n, LoaderOptions(**knobs))


def test_units_are_the_chunks_of_the_heaviest_array_whatever_the_others():
    """x by 97 and y by 211 share almost no boundary; the units are still x's 11 chunks."""
    n = 1003
    x, y = chunked("x", 12, n, 97), chunked("y", 8, n, 211)
    for budget in ("1GiB", "60KB", "20KB"):
        chosen = layout([x, y], n, memory_budget=budget)
        assert chosen.unit_array == "x" and chosen.n_units == 11
    # Whichever array is given first: the heavier one sets the units.
    assert layout([chunked("y", 8, n, 211), chunked("x", 120, n, 97)], n).unit_array == "x"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000),
    st.lists(st.tuples(st.integers(1, 64), st.integers(1, 800)), min_size=1, max_size=4),
    st.integers(10_000, 10**8),
    st.integers(1, 64),
)
def test_no_layout_has_fewer_units_than_the_heaviest_array_has_chunks(n, arrays, budget, batch_size):
    specs = [chunked(f"a{i}", size, n, chunk) for i, (size, chunk) in enumerate(arrays)]
    try:
        chosen = layout(specs, n, memory_budget=budget, batch_size=batch_size)
    except MemoryBudgetError as err:  # the budget it names works, and its layout holds the same invariants
        assert err.smallest is not None and err.smallest > budget
        budget = err.smallest
        chosen = layout(specs, n, memory_budget=budget, batch_size=batch_size)
    heaviest = max(specs, key=lambda a: a.nbytes)
    assert chosen.n_units == len(heaviest.bounds) - 1
    assert chosen.held_bytes <= budget
    if not chosen.resident:
        windowed = sum(a.bytes_per_sample for a in specs if a.name in chosen.windowed)
        assert SLOTS * chosen.window_samples * windowed + chosen.held_bytes <= budget
        assert chosen.amplification >= chosen.reads_per_chunk * (heaviest.nbytes / chosen.served_per_epoch) - 1e-9


def test_small_arrays_are_held_whole_and_data_that_fits_is_resident():
    n = 100_000
    x, y = chunked("x", 3072, n, 25_000), chunked("y", 8, n, 25_000)
    fits = layout([x, y], n)  # 300 MB in a 1 GiB budget
    assert fits.resident and fits.amplification == 0 and fits.decoded_per_epoch == 0
    assert fits.reads_per_chunk == 1
    streamed = layout([x, y], n, memory_budget=30 * 2**20)  # 10% of the data
    assert not streamed.resident and streamed.held == ("y",) and streamed.windowed == ("x",)
    assert streamed.held_bytes == y.nbytes <= HELD_FRACTION * 30 * 2**20
    # Every read unit (a zarr-default chunk of 25,000 images) is larger than a window: read in parts.
    assert streamed.reads_per_chunk > 1
    assert streamed.amplification == pytest.approx(streamed.reads_per_chunk * x.nbytes / (x.nbytes + y.nbytes))
    assert "larger than a window" in streamed.reason or "places" in streamed.reason


def test_a_secondary_array_that_straddles_units_costs_what_it_decodes():
    n = 1000
    x, w = chunked("x", 100, n, 100), chunked("w", 100, n, 250)  # w's chunks straddle x's
    chosen = layout([x, w], n, memory_budget=100_000, reads_per_chunk=1)
    assert chosen.windowed == ("x", "w") and not chosen.held
    # Each of x's 10 units reads the chunks of w it touches: units 2 and 7 straddle two, the others one.
    w_rows = 8 * 250 + 2 * 500
    assert chosen.decoded_per_epoch == 100 * (n + w_rows)
    assert chosen.amplification == pytest.approx((n + w_rows) / (2 * n))


def test_auto_reads_more_only_when_a_window_holds_few_chunks():
    n = 100 * 1000
    x = chunked("x", 10, n, 1000)
    assert layout([x], n, memory_budget=10**9).resident
    assert layout([x], n, memory_budget=SLOTS * 18 * 40_000).reads_per_chunk == 1  # 40 units in a window
    small = layout([x], n, memory_budget=SLOTS * 18 * 2000)  # 2 chunks a window -> 32 / 2 reads
    assert small.reads_per_chunk == 16 and small.window_samples == 2000
    assert layout([x], n, memory_budget=SLOTS * 18 * 2000, reads_per_chunk=3).reads_per_chunk == 3
    tiny = layout([x], n, memory_budget=SLOTS * 18 * 1001, batch_size=1)
    assert tiny.reads_per_chunk == MAX_AUTO_READS
    # Written in random order: one read mixes, only what fitting a window needs.
    assert (
        choose_layout([x], n, LoaderOptions(seed=0, memory_budget=SLOTS * 18 * 2000), mixed=True).reads_per_chunk == 1
    )


def test_auto_measures_labels_only_where_they_could_change_its_reads():
    """``labels`` is called at most once, with the read units' bounds, and only when streaming would read
    chunks more than once to mix them (or decode much more than it serves)."""
    n = 100 * 1000
    x = chunked("x", 10, n, 1000)
    calls = []

    def labels(grouping):
        def measure(bounds):
            calls.append(bounds)
            return {"y": grouping}

        return measure

    small = SLOTS * 18 * 2000  # 2 chunks a window: auto reads 16x on a store it knows nothing of
    mixed = choose_layout([x], n, LoaderOptions(seed=0, memory_budget=small), labels=labels(0.01))
    assert mixed.reads_per_chunk == 1 and mixed.labels_mixed and mixed.label_grouping == {"y": 0.01}
    assert "labels are mixed already (grouping y 0.01" in mixed.reason
    assert len(calls) == 1 and np.array_equal(calls[0], x.bounds)
    grouped = choose_layout([x], n, LoaderOptions(seed=0, memory_budget=small), labels=labels(MIXED_GROUPING + 0.01))
    assert grouped.reads_per_chunk == 16 and not grouped.labels_mixed and grouped.label_grouping
    # Nothing to decide: data that fits, a store written shuffled, reads given, no shuffle, one read anyway.
    calls.clear()
    for options, mixed_mark in [
        (LoaderOptions(seed=0), False),
        (LoaderOptions(seed=0, memory_budget=small), True),
        (LoaderOptions(seed=0, memory_budget=small, reads_per_chunk=4), False),
        (LoaderOptions(seed=0, memory_budget=small, shuffle=False), False),
        (LoaderOptions(seed=0, memory_budget=SLOTS * 18 * 40_000), False),
    ]:
        chosen = choose_layout([x], n, options, mixed=mixed_mark, labels=labels(0.0))
        assert chosen.label_grouping == {}
    assert calls == []
    # Nothing measured (no class labels): as without labels.
    unmeasured = choose_layout([x], n, LoaderOptions(seed=0, memory_budget=small), labels=lambda bounds: {})
    assert unmeasured.reads_per_chunk == 16 and unmeasured.label_grouping == {}


def test_auto_never_reads_more_than_a_window_needs_to_reach_every_chunk():
    """4 chunks, windows of 28% of the data: 4 reads reach all of them; 29 (for 32 places) would decode 7x more."""
    n = 4 * 25_000
    x = chunked("x", 100, n, 25_000)
    chosen = layout([x], n, memory_budget=SLOTS * 108 * 28_000)
    assert not chosen.resident and chosen.window_samples == 28_000 and chosen.reads_per_chunk == 4


@pytest.mark.parametrize("reads", [1, 4, "auto"])
def test_too_small_a_budget_names_the_smallest_that_works(reads):
    n = 2400
    x = ArraySpec("x", 100, np.array([0, 1000, 2000, 2400]))
    kwargs = dict(batch_size=64, reads_per_chunk=reads, seed=0)
    with pytest.raises(MemoryBudgetError, match="smallest budget that works is") as info:
        layout([x], n, memory_budget=1000, **kwargs)
    smallest = int(str(info.value).split("(")[-1].split(" bytes")[0])
    layout([x], n, memory_budget=smallest, **kwargs)  # and it does work
    with pytest.raises(MemoryBudgetError):
        layout([x], n, memory_budget=smallest - 1, **kwargs)


def test_arrays_in_memory_are_never_counted_and_never_decoded():
    n = 10_000
    memory = ArraySpec("x", 1000, None)
    chosen = layout([memory], n, memory_budget="10MB")
    assert chosen.unit_array is None and chosen.resident and chosen.decoded_per_epoch == 0
    assert chosen.n_units >= 2  # cut into ~4 MiB units, so shard= works on numpy too


def test_chunks_decoded_at_once_stay_within_a_quarter_of_the_budget():
    from daskfeed.layout import decode_limit

    mib = 2**20
    small = decode_limit([("x", 3 * mib), ("y", 8192)], 2**30, cores=16, concurrency=32)
    assert (small.threads, small.in_flight, small.warning()) == (16, 32, None)  # 16 x 2 x 3 MiB < 256 MiB
    # dask's default chunks (128 MiB) at 1 GiB: one at a time, within the quarter, no word.
    dask_default = decode_limit([("x", 128 * mib)], 2**30, cores=16, concurrency=32)
    assert (dask_default.threads, dask_default.in_flight, dask_default.warning()) == (1, 1, None)
    assert dask_default.transient_bytes <= 2**30 // 4
    # ...at 64 MB even one is too many: decoded one at a time, and a warning says what it costs and what fits.
    tight = decode_limit([("y", 8192), ("x", 128 * mib)], 64 * 10**6, cores=16, concurrency=32)
    assert (tight.threads, tight.in_flight) == (1, 1)
    message = tight.warning()
    assert "one chunk of x decodes to 128.00 MiB" in message and "up to 256.00 MiB beyond the budget" in message
    assert "A budget of 1.00 GiB or more" in message and tight.smallest_budget == 2**30
    between = decode_limit([("x", 8 * mib)], 2**30, cores=64, concurrency=32)
    assert between.threads == 16 and between.transient_bytes == 2**30 // 4  # 16 x 2 x 8 MiB

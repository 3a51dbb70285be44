"""Property tests of the epoch plan: exactly once, determinism, shards, reads per chunk, window bounds."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskfeed.errors import InputError
from daskfeed.plan import FIRST_WINDOW_CHUNKS, EpochPlan, PlanConfig

#: Whether a plan holds its whole shard in memory (one window), drawn one time in three.
RESIDENT = st.sampled_from([False, False, True])


@st.composite
def configs(draw, resident=RESIDENT):
    """Plan configurations; ``resident`` draws whether the shard is one window held in memory."""
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    shuffle = draw(st.booleans())
    reads = draw(st.integers(1, 5)) if shuffle else 1
    count = draw(st.integers(1, len(lengths)))
    resident = draw(resident)
    return PlanConfig(
        chunk_bounds=bounds,
        batch_size=draw(st.integers(1, 25)),
        seed=draw(st.integers(0, 2**63 - 1)),
        shuffle=shuffle,
        drop_remainder=draw(st.booleans()),
        reads_per_chunk=reads,
        window_samples=draw(st.integers(1, 200)),
        shard=(draw(st.integers(0, count - 1)), count),
        resident=resident,
    )


def epoch_samples(plan: EpochPlan) -> np.ndarray:
    parts = [plan.samples(w) for w in range(plan.n_windows)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def shard_samples(config: PlanConfig) -> np.ndarray:
    b = config.chunk_bounds
    return np.concatenate([np.arange(b[c], b[c + 1]) for c in config.chunks])


@settings(max_examples=300, deadline=None)
@given(configs(), st.integers(0, 5))
def test_every_sample_of_the_shard_exactly_once(config, epoch):
    plan = EpochPlan(config, epoch)
    samples = epoch_samples(plan)
    assert np.array_equal(np.sort(samples), shard_samples(config))
    assert plan.n_samples == len(samples)
    bs = config.batch_size
    if config.drop_remainder:
        assert plan.n_batches == len(samples) // bs and plan.n_served == plan.n_batches * bs
    else:
        assert plan.n_batches == -(-len(samples) // bs) and plan.n_served == len(samples)
    # Batches tile the served positions, in order, without gaps.
    spans = [plan.batch_span(i) for i in range(plan.n_batches)] or [(0, 0)]
    assert spans[0][0] == 0 and spans[-1][1] == plan.n_served
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


@settings(max_examples=150, deadline=None)
@given(configs(), st.integers(0, 3))
def test_same_seed_and_epoch_give_the_same_plan(config, epoch):
    one, two = EpochPlan(config, epoch), EpochPlan(config, epoch)
    assert np.array_equal(epoch_samples(one), epoch_samples(two))
    assert np.array_equal(one.window_offsets, two.window_offsets)


@settings(max_examples=150, deadline=None)
@given(configs(), st.integers(0, 3))
def test_shards_partition_the_epoch(config, epoch):
    count = config.shard[1]
    every = []
    for index in range(count):
        shard = PlanConfig(
            chunk_bounds=config.chunk_bounds,
            batch_size=config.batch_size,
            seed=config.seed,
            shuffle=config.shuffle,
            reads_per_chunk=config.reads_per_chunk,
            window_samples=config.window_samples,
            shard=(index, count),
        )
        plan = EpochPlan(shard, epoch)
        every.append(epoch_samples(plan))
        # A shard holds the same chunks every epoch, so its length never changes.
        assert EpochPlan(shard, epoch + 1).n_samples == plan.n_samples
    union = np.concatenate(every)
    assert len(union) == config.chunk_bounds[-1]
    assert np.array_equal(np.sort(union), np.arange(config.chunk_bounds[-1]))


@settings(max_examples=150, deadline=None)
@given(configs(), st.integers(0, 3))
def test_each_chunk_is_read_reads_per_chunk_times_with_disjoint_parts(config, epoch):
    plan = EpochPlan(config, epoch)
    r = plan.reads  # one in an epoch served from memory
    assert r == (1 if config.resident else config.reads_per_chunk)
    for chunk in config.chunks:
        start, stop = plan.chunk_range(int(chunk))
        units = np.flatnonzero(plan.read_chunk == chunk)
        assert len(units) == min(r, stop - start)  # a chunk shorter than r has empty parts, skipped
        kept = [plan.kept_rows(int(u)) for u in units]
        if r == 1:
            assert kept == [None]
        else:
            rows = np.concatenate(kept)
            assert np.array_equal(np.sort(rows), np.arange(stop - start))


@settings(max_examples=150, deadline=None)
@given(configs(resident=st.just(False)), st.integers(0, 3))  # a resident plan is one window: the test below
def test_windows_respect_their_size_and_batches_span_at_most_two(config, epoch):
    plan = EpochPlan(config, epoch)
    sizes = [plan.window_size(w) for w in range(plan.n_windows)]
    max_unit = int(plan.read_size.max())
    for w, size in enumerate(sizes):
        assert size <= max(config.window_samples, int(plan.read_size[plan.reads_of(w)][0]))
    if config.window_samples >= max_unit + config.batch_size:  # what choose_layout guarantees
        for i in range(plan.n_batches):
            assert len(plan.windows_of(*plan.batch_span(i))) <= 2
    for i in range(plan.n_batches):
        start, stop = plan.batch_span(i)
        for w in plan.windows_of(start, stop):
            assert i in plan.batches_of(w)


@settings(max_examples=100, deadline=None)
@given(configs())
def test_without_shuffle_samples_come_in_storage_order(config):
    config = PlanConfig(chunk_bounds=config.chunk_bounds, batch_size=config.batch_size, seed=0, shuffle=False)
    for epoch in (0, 1):
        assert np.array_equal(epoch_samples(EpochPlan(config, epoch)), np.arange(config.chunk_bounds[-1]))


def test_epochs_differ():
    config = PlanConfig(chunk_bounds=np.arange(0, 1001, 100), batch_size=10, seed=3, window_samples=300)
    assert not np.array_equal(epoch_samples(EpochPlan(config, 0)), epoch_samples(EpochPlan(config, 1)))


def test_awkward_sizes_one_sample_and_fewer_than_a_batch():
    one = EpochPlan(PlanConfig(chunk_bounds=np.array([0, 1]), batch_size=32, seed=0), 0)
    assert (one.n_batches, one.batch_span(0)) == (1, (0, 1))
    dropped = EpochPlan(PlanConfig(chunk_bounds=np.array([0, 5, 7]), batch_size=32, seed=0, drop_remainder=True), 0)
    assert dropped.n_batches == 0 and all(len(dropped.batches_of(w)) == 0 for w in range(dropped.n_windows))


def test_plan_memory_is_o_chunks_not_o_samples():
    """10^9 samples in 10^5 chunks: the plan allocates per chunk, never a permutation of the samples."""
    bounds = np.arange(0, 10**9 + 1, 10**4)
    config = PlanConfig(chunk_bounds=bounds, batch_size=128, seed=0, reads_per_chunk=2, window_samples=10**6)
    tracemalloc.start()
    plan = EpochPlan(config, 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.n_samples == 10**9
    assert peak < 64 * 2**20  # 2 x 10^5 read units; a sample permutation alone would be 8 GB
    assert len(plan.window_order(7)) == plan.window_size(7)


def test_config_errors_name_the_argument():
    with pytest.raises(InputError, match="chunk_bounds must rise strictly from 0"):
        PlanConfig(chunk_bounds=np.array([0, 5, 5]), batch_size=1, seed=0)
    with pytest.raises(InputError, match=r"shard=\(0, 3\) asks for 3 shards but the arrays have only 2 read units"):
        PlanConfig(chunk_bounds=np.array([0, 5, 10]), batch_size=1, seed=0, shard=(0, 3))
    with pytest.raises(IndexError, match="batch index 5 is out of range"):
        EpochPlan(PlanConfig(chunk_bounds=np.array([0, 10]), batch_size=2, seed=0), 0).batch_span(5)


@settings(max_examples=150, deadline=None)
@given(configs(resident=st.just(True)), st.integers(0, 3))
def test_resident_epochs_are_one_window_in_storage_order_then_shuffled(config, epoch):
    """A resident plan makes every epoch one window of the whole shard: a full shuffle in memory."""
    plan = EpochPlan(config, epoch)
    assert plan.n_windows == 1 and plan.reads == 1 and plan.kept_rows(0) is None
    assert np.array_equal(plan.read_chunk, config.chunks)  # read units in storage order
    assert plan.window_size(0) == int(np.diff(config.chunk_bounds)[config.chunks].sum())


def test_resident_plans_shuffle_the_whole_shard_every_epoch():
    config = PlanConfig(chunk_bounds=np.arange(0, 1001, 100), batch_size=10, seed=3, window_samples=300, resident=True)
    first, second = (epoch_samples(EpochPlan(config, e)) for e in (0, 1))
    assert not np.array_equal(first, second)
    # A full shuffle: the first 100 served samples come from nearly every chunk.
    assert len(np.unique(first[:100] // 100)) >= 9 and len(np.unique(second[:100] // 100)) >= 9


@pytest.mark.parametrize("reads", [1, 3])
def test_epoch_0_starts_with_small_windows_of_many_chunks_that_grow_to_the_full_size(reads):
    """The first window of epoch 0 holds FIRST_WINDOW_CHUNKS reads of as many chunks; the next double."""
    bounds = np.arange(0, 1000 * 16 + 1, 16)  # 1,000 chunks of 16 samples
    config = PlanConfig(chunk_bounds=bounds, batch_size=10, seed=1, reads_per_chunk=reads, window_samples=3200)
    first, later = EpochPlan(config, 0), EpochPlan(config, 1)
    counts = [len(first.reads_of(w)) for w in range(first.n_windows)]
    sizes = [first.window_size(w) for w in range(first.n_windows)]
    biggest = int(first.read_size.max())
    assert counts[0] == FIRST_WINDOW_CHUNKS
    small = next(k for k, s in enumerate(sizes) if s > 3200 - biggest)  # the windows before are small
    assert small >= 2
    for k in range(1, small):  # twice the samples of the first (give or take a read), never more than full
        assert first.window_size(0) * 2**k - biggest < sizes[k] <= first.window_size(0) * 2**k
    assert all(3200 - biggest < s <= 3200 for s in sizes[small:-1])
    assert all(3200 - biggest < later.window_size(w) <= 3200 for w in range(later.n_windows - 1))  # epoch 1: full
    head = first.read_chunk[first.reads_of(0)]
    assert len(set(head.tolist())) == len(head)  # as many chunks
    assert np.ptp(head) > 700  # from all over the array
    np.testing.assert_array_equal(np.sort(epoch_samples(first)), np.arange(16000))


def test_windows_of_fewer_than_twice_first_window_chunks_reads_are_all_full_size():
    bounds = np.arange(0, 100 * 64 + 1, 64)
    config = PlanConfig(chunk_bounds=bounds, batch_size=10, seed=1, window_samples=63 * 64)  # 63 reads a window
    plan = EpochPlan(config, 0)
    assert [plan.window_size(w) for w in range(plan.n_windows)] == [63 * 64, 37 * 64]

"""LoaderOptions: validated once, named errors, and the one set of defaults both doors and the Loader share."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import daskfeed
from daskfeed import LoaderOptions, Shard
from daskfeed.options import KNOBS, parse_loader_options


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_size=0), daskfeed.InputError, "batch_size must be >= 1, got 0"),
        (dict(batch_size=2.5), daskfeed.InputTypeError, "batch_size must be an int >= 1, got 2.5"),
        (dict(memory_budget="lots"), daskfeed.MemoryBudgetError, "memory_budget='lots' is not a size"),
        (dict(memory_budget=-5), daskfeed.MemoryBudgetError, "memory_budget must be positive, got -5"),
        (dict(memory_budget=10**30), daskfeed.MemoryBudgetError, "larger than any machine's memory"),
        (dict(shard=(3, 3)), daskfeed.InputError, r"needs 0 <= index < count, got \(3, 3\)"),
        (dict(shard=[0, 2]), daskfeed.InputTypeError, r"shard must be a tuple \(index, count\)"),
        (dict(seed=2**63), daskfeed.InputError, "seed must be < 2\\*\\*63"),
        (dict(scheduler="nonsense"), daskfeed.InputError, "scheduler must be None, one of 'threads'"),
        (dict(shuffle=False, reads_per_chunk=2), daskfeed.InputError, "shuffle=False serves samples in storage"),
        (dict(concurrency=0), daskfeed.InputError, "concurrency must be >= 1, got 0"),
        (dict(concurrency="32"), daskfeed.InputTypeError, "concurrency must be an int >= 1, got '32'"),
    ],
)
def test_bad_knobs_are_named_once_for_every_door(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoaderOptions(**kwargs)
    with pytest.raises(error, match=match):
        daskfeed.Loader(np.zeros((10, 2)), **kwargs)


def test_options_are_parsed_once_from_an_object_a_dict_or_keywords():
    options = LoaderOptions(batch_size=8, seed=1, memory_budget="1MB", shard=(1, 2))
    assert options.memory_budget == 10**6 and options.shard == Shard(1, 2)
    assert parse_loader_options(options) is options
    assert parse_loader_options({"batch_size": 8, "seed": 1}, seed=2).seed == 2
    with pytest.raises(daskfeed.InputTypeError, match="unknown loader option 'batchsize'; the options are"):
        parse_loader_options(batchsize=8)
    one = LoaderOptions(batch_size=8, seed=1)
    loader = daskfeed.Loader(np.arange(20).reshape(20, 1), options=one, batch_size=4)
    assert loader.options == dataclasses.replace(one, batch_size=4) and len(loader) == 5
    assert isinstance(LoaderOptions().seed, int)  # drawn when not given, and then fixed


@pytest.mark.tf
def test_the_doors_take_the_knobs_written_once_in_loader_options():
    """The knobs and their defaults are written in LoaderOptions only: the doors take ``**knobs`` and hand them
    on, so a door's default is LoaderOptions's (shard aside: as_dataset's is the whole epoch)."""
    pytest.importorskip("tensorflow")
    from daskfeed.keras import as_sequence
    from daskfeed.tf import as_dataset

    x = np.zeros((10, 2), "f4")
    defaults = LoaderOptions(seed=0)
    for door in (as_sequence, as_dataset):
        params = inspect.signature(door).parameters
        assert not set(params) & set(KNOBS), door.__name__
        assert params["knobs"].kind is inspect.Parameter.VAR_KEYWORD
        made = door(x, seed=0).loader.options
        assert {k: getattr(made, k) for k in KNOBS if k != "shard"} == {
            k: getattr(defaults, k) for k in KNOBS if k != "shard"
        }, door.__name__


def test_set_epoch_is_the_only_way_the_epoch_moves():
    loader = daskfeed.Loader(np.arange(10).reshape(10, 1), batch_size=5, seed=0)
    with pytest.raises(AttributeError):
        loader.epoch = 3
    loader.set_epoch(3)
    assert loader.epoch == 3 and loader.plan().epoch == 3
    with pytest.raises(daskfeed.InputError, match="epoch must be >= 0"):
        loader.set_epoch(-1)
    loader.close()
    with pytest.raises(daskfeed.DaskfeedError, match="closed"):
        loader.batch(0)

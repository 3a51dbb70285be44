"""Messages a newcomer meets in the first hour: each says what was expected, what was got, and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_store

import daskfeed
from daskfeed.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path):
    """A store whose arrays are named as the README's image example names them: images and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(300, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(300, dtype=np.int64) % 10
    return write_store(tmp_path / "b.zarr", {"images": images, "labels": labels}, {"images": 100, "labels": 300})


def test_a_key_the_store_lacks_lists_its_arrays(store):
    arrays = daskfeed.open_zarr(store)
    with pytest.raises(KeyError) as caught:
        arrays["x"]
    message = str(caught.value)
    assert f"store {store} has no array 'x'; its arrays are 'images', 'labels'" in message
    assert "open_zarr's keys are the store's own array names" in message
    with pytest.raises(KeyError, match=r"did you mean arrays\['images'\]\?"):
        arrays["image"]
    assert arrays.get("x") is None and "x" not in arrays  # still a dict for every other use


def test_a_misspelt_array_path_lists_the_stores_arrays(store, capsys):
    with pytest.raises(daskfeed.StoreError) as caught:
        daskfeed.open_zarr(f"{store}/image")
    message = str(caught.value)
    assert f"store '{store}/image' does not exist: '{store}' is a zarr store whose arrays are 'images', 'labels'" in (
        message
    )
    assert f"(did you mean {store}/images?)" in message
    code, _, err = run(capsys, "info", f"{store}/image")
    assert code == 1 and "whose arrays are 'images', 'labels'" in err and f"did you mean {store}/images?" in err
    code, _, err = run(capsys, "ingest", f"{store}/image", store + "-out.zarr", "--quiet")
    assert code == 1
    assert f"source '{store}/image' does not exist: '{store}' is a zarr store whose arrays are" in err


def test_a_path_outside_any_store_just_does_not_exist(tmp_path):
    with pytest.raises(daskfeed.StoreError) as caught:
        daskfeed.open_zarr(tmp_path / "nowhere.zarr")
    assert str(caught.value).endswith("does not exist")


def test_a_memory_budget_float_that_is_a_whole_number_of_bytes_is_taken(store):
    arrays = daskfeed.open_zarr(store)
    with daskfeed.Loader(arrays["images"], arrays["labels"], batch_size=50, memory_budget=1e9) as loader:
        assert loader.memory_budget == 1_000_000_000
    with pytest.raises(daskfeed.MemoryBudgetError) as caught:
        daskfeed.Loader(arrays["images"], arrays["labels"], batch_size=50, memory_budget=1.5)
    assert isinstance(caught.value, ValueError)
    assert "memory_budget must be a whole number of bytes, got 1.5" in str(caught.value)
    assert "'512MB'" in str(caught.value)  # the fix: a size string


def test_ingest_seed_without_shuffle_is_an_error_naming_both_flags(store, tmp_path, capsys):
    dest = tmp_path / "out.zarr"
    with pytest.raises(SystemExit) as caught:
        main(["ingest", store, str(dest), "--seed", "3"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--seed 3 orders the --shuffle permutation, but --shuffle is not given" in err
    assert "add --shuffle (or drop --seed)" in err
    assert not dest.exists()
    with pytest.raises(daskfeed.InputError, match=r"seed=3 orders a shuffle, but shuffle is False.*shuffle=True"):
        daskfeed.ingest(store, dest, seed=3, progress=False)
    code, _, err = run(capsys, "ingest", store, dest, "--seed", 3, "--shuffle", "--quiet")
    assert code == 0, err


def test_info_help_says_what_a_store_may_be_and_the_budgets_units(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["info", "--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "a zarr store: a group (train.zarr, every array in it), one array in it (train.zarr/images), or a URL" in out
    assert "s3://bucket/train.zarr" in out
    assert "--memory-budget SIZE the decoded data the loader may hold, with its unit: 512MB, 2GiB" in out
    assert "a number without a unit is bytes" in out


def test_a_budget_without_a_unit_is_refused_as_a_missing_unit(store, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["info", store, "--memory-budget", "64"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --memory-budget: '64' has no unit, so it would be 64 bytes; write the unit: 64MB" in err
    code, out, _ = run(capsys, "info", store, "--memory-budget", "64MB")
    assert code == 0 and "store " in out
    with pytest.raises(SystemExit):
        main(["info", store, "--memory-budget", "lots"])
    assert "--memory-budget='lots' is not a size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["info", "{store}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["bench", "{store}", "--reads-per-chunk", "0"], "--reads-per-chunk must be >= 1"),
        (["ingest", "{store}", "{out}", "--chunk-length", "-1", "--quiet"], "--chunk-length must be"),
    ],
)
def test_cli_errors_name_the_flag_not_the_python_argument(store, tmp_path, capsys, argv, said):
    argv = [a.format(store=store, out=tmp_path / "o.zarr") for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"daskfeed {argv[0]}: error: {said}" in err
    python_name = argv[2 if argv[0] != "ingest" else 3].lstrip("-").replace("-", "_")
    assert python_name not in err


def test_arrays_of_another_length_in_a_store_point_to_the_paths_that_work(tmp_path, capsys):
    """A plain zarr store (no xarray dimension names) with a small lookup table beside the samples."""
    path = write_store(
        tmp_path / "plain.zarr",
        {"x": np.zeros((100, 3), "f4"), "y": np.arange(100), "classes": np.arange(7)},
        {"x": 10, "y": 100, "classes": 7},
    )
    code, _, err = run(capsys, "ingest", path, tmp_path / "out.zarr", "--quiet")
    assert code == 1
    assert "every array of a store needs the same number of samples (axis 0)" in err
    assert f"by their paths in the store: daskfeed ingest {path}/x {path}/y DEST" in err
    assert "x=a.npy" not in err  # the hint for files, not for stores
    code, out, _ = run(capsys, "info", path)
    assert code == 0
    assert f"pass those by name: arrays['x'], arrays['y']; to rewrite them: daskfeed ingest {path}/x {path}/y" in out
    assert "loader: 10 read units (chunks of x)" in out  # the samples' arrays, not the 7-row table
    code, _, err = run(capsys, "ingest", f"{path}/x", f"{path}/y", tmp_path / "ok.zarr", "--quiet")
    assert code == 0, err

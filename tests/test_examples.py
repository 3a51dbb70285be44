"""The demo and the benchmark run as they are, at a small size."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.tf]  # whole examples and benchmarks: 2-27 s each
pytest.importorskip("keras")


def load(relative: str):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("door", ["sequence", "dataset"])
def test_demo_trains_streaming_within_a_small_budget(tmp_path, door, capsys):
    demo = load("examples/demo.py")
    result = demo.main(
        [
            "--store",
            str(tmp_path / "demo.zarr"),
            "--samples",
            "6000",
            "--chunk",
            "500",
            "--epochs",
            "2",
            "--memory-budget",
            "8MB",
            "--door",
            door,
        ]
    )
    assert result["data_mb"] * 4 > 8 * 8  # the data (float32 after scaling) is 8x the budget and more
    assert result["accuracy"] > 0.3 and result["samples_per_s"] > 0
    assert "samples/s" in capsys.readouterr().out


def test_benchmark_suite_quick(tmp_path, capsys):
    """The suite at its smoke size: every way of reading runs and the three reports are written."""
    pytest.importorskip("xbatcher")
    pytest.importorskip("matplotlib")
    run = load("benchmarks/run.py")
    report = run.main(["--quick", "--store", str(tmp_path / "bench.zarr"), "--out", str(tmp_path / "results")])
    names = [row["name"] for row in report["rows"]]
    assert run.RAW in names and run.LIMIT in names and len(names) == 14
    assert all(row["samples_per_s"] > 0 for row in report["rows"])
    overlap = {"step_ms", "loader_only_s", "step_only_s", "both_s", "ratio_to_max"}
    assert overlap <= set(report["overlap"])  # it ran and says how long each took (never asserted: the machine's)
    assert report["memory"]["ran"] and report["memory"]["peak_window_mb"] <= report["memory"]["budget_mb"]
    assert "too small to cap" in report["memory"]["larger_than_memory"]["why_not"]
    assert report["remote"]["ratio"] > 0 and report["first_batch"]["seconds"] > 0
    assert report["scaling"]["ratio"] > 0 or not report["scaling"]["ran"]
    assert [t["key"] for t in report["targets"]] == [key for _, key, _, _ in run.TARGETS]
    for suffix in ("md", "json", "png"):
        assert (tmp_path / "results" / f"quick.{suffix}").stat().st_size > 0
    assert "| way of reading | samples/s |" in capsys.readouterr().out


def test_images_example_ingests_a_folder_and_trains_a_cnn(tmp_path, capsys):
    pytest.importorskip("PIL")
    images = load("examples/images.py")
    argv = ["--per-class", "200", "--epochs", "8", "--batch-size", "32", "--size", "24"]
    result = images.main(["--work", str(tmp_path), *argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "test.zarr", "train", "train.zarr"]
    assert result["test_accuracy"] > 0.5  # three classes: chance is 0.33
    out = capsys.readouterr().out
    assert "600 samples" in out and "class_names: ['crosses', 'discs', 'squares']" in out


def test_multi_input_example_trains_from_a_dict_with_sample_weights(tmp_path, capsys):
    multi = load("examples/multi_input.py")
    result = multi.main(["--store", str(tmp_path / "m.zarr"), "--samples", "6000", "--chunk", "500", "--epochs", "2"])
    assert result["test_weighted_accuracy"] > 0.5 and result["rare_class_recall"] > 0.25  # 4 classes
    assert "weighted accuracy" in capsys.readouterr().out


def test_digits_example_reports_held_out_accuracy(tmp_path, capsys):
    pytest.importorskip("sklearn")
    digits = load("examples/digits.py")
    result = digits.main(["--work", str(tmp_path), "--epochs", "10"])
    assert result["test_samples"] == 450 and result["test_accuracy"] > 0.85  # ten classes: chance is 0.1
    assert "held-out accuracy" in capsys.readouterr().out


def test_ingest_benchmark_quick(tmp_path, capsys):
    bench = load("benchmarks/ingest.py")
    report = bench.main(["--quick", "--out", str(tmp_path)])
    assert [r["ratio"] is None for r in report["rows"]] == [True, False, True, False]
    assert all(r["seconds"] > 0 for r in report["rows"]) and not report["capped"]["ran"]
    assert (tmp_path / "ingest-quick.md").read_text().startswith("# daskfeed ingest: 20,000 images")
    assert "| way of writing the store |" in capsys.readouterr().out


def test_layouts_benchmark_quick(tmp_path, capsys):
    """The layouts benchmark at its smoke size: every layout runs, constructs at a small budget, serves each
    sample once, partitions into shards, and the report is written."""
    pytest.importorskip("xarray")
    layouts = load("benchmarks/layouts.py")
    report = layouts.main(["--quick", "--work", str(tmp_path / "stores"), "--out", str(tmp_path / "results")])
    assert [row["layout"] for row in report["rows"]] == list(layouts.LAYOUTS)
    for row in report["rows"]:
        small = row["budget_10pct"]
        assert small["exactly_once"] and small["shards_partition"]
        assert small["read_units"] == small["x_chunks"]  # never fewer units than the heaviest array's chunks
        assert row["defaults"]["resident"] and row["defaults"]["windows_computed"] == 1
        assert 0 <= row["accuracy_10pct"] <= 1
    assert (tmp_path / "results" / "layouts-quick.md").stat().st_size > 0
    assert "| layout | x chunks |" in capsys.readouterr().out


def test_soak_benchmark_quick(tmp_path, capsys):
    """Epochs through both doors with RSS and threads after each: the numbers are there and threads don't pile up."""
    soak = load("benchmarks/soak.py")
    report = soak.main(["--quick", "--store", str(tmp_path / "soak.zarr"), "--out", str(tmp_path / "results")])
    for door in ("as_sequence", "as_dataset"):
        rows = report["doors"][door]["epochs"]
        assert len(rows) == 6 and all(r["rss_mb"] > 0 for r in rows)
        # Threads come and go with the work (a prefetch and a read thread per core at most); a leak would add
        # one or more per epoch and pass the most seen in the first epochs by more than that.
        assert rows[-1]["threads"] <= max(r["threads"] for r in rows[:3]) + 4
    dropped = report["dropped"]
    assert len(dropped["loaders"]) == 6 and dropped["loaders_alive_at_end"] == 0  # every dropped loader was freed
    assert "| as_dataset |" in capsys.readouterr().out


def test_memory_benchmark_quick(tmp_path, capsys):
    """Peak RSS per budget on a store of large chunks, each epoch in a fresh process: the numbers are there."""
    memory = load("benchmarks/memory.py")
    report = memory.main(["--quick", "--store", str(tmp_path / "m.zarr"), "--out", str(tmp_path / "results")])
    for run in report["runs"].values():
        assert run["served"] == 20_000 and run["peak_above_base"] > 0 and run["threads"] == 1
    assert "| memory_budget |" in capsys.readouterr().out


def test_forecast_example_trains_on_windows_of_a_stored_series(tmp_path, capsys):
    forecast = load("examples/forecast.py")
    argv = ["--store", str(tmp_path / "f.zarr"), "--steps", "20000", "--epochs", "2"]
    result = forecast.main(argv)
    assert result["val_mse"] < 0.5 * result["baseline_mse"]  # better than predicting the mean
    assert result["train_windows"] + result["val_windows"] == (20000 - 2 * 48) // 2 + 1  # every window, once
    assert not result["resident"] and result["amplification"] == pytest.approx(1.0, abs=0.01)
    assert "validation mse" in capsys.readouterr().out


def test_samples_benchmark_quick(tmp_path, capsys):
    """Windows and patches against timeseries_dataset_from_array, a zarr-slicing PyDataset and xbatcher: every
    way runs, each chunk is decoded once per epoch, and the report is written."""
    pytest.importorskip("xbatcher")
    samples = load("benchmarks/samples.py")
    report = samples.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "results")])
    for part in ("series", "patches"):
        row = report[part]
        # The plan decodes each chunk once per epoch (exact chunk read counts are test_samples.py's): its bytes
        # decoded per epoch are at most those it serves (less where labels are held whole).
        assert "reads_per_chunk=1" in row["layout"] and 0 < row["amplification_layout"] <= 1, row
        # One pass's bytes: its edges move with how far prefetch ran into it from the epoch before and into the
        # next one (0.95x was seen under load), by no more than the decoded data the memory budget holds.
        windowed_mib = row["mib"] * row["amplification_all_arrays"] / row["amplification_measured"]
        assert abs(row["amplification_measured"] - 1) * windowed_mib <= row["budget_mib"], row
        assert row["daskfeed"] > 0
    assert report["series"]["timeseries_dataset_from_array"] > 0 and report["patches"]["xbatcher"] > 0
    assert (tmp_path / "results" / "samples-quick.md").stat().st_size > 0
    assert "| way of reading | windows/s |" in capsys.readouterr().out

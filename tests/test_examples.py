"""The demo and the benchmark run as they are, at a small size."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("keras")


def load(relative: str):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], ROOT / relative)
    module = importlib.util.module_from_spec(spec)
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


def test_epoch_benchmark_quick(tmp_path, capsys):
    bench = load("benchmarks/epoch.py")
    rates = bench.main(["--store", str(tmp_path / "bench.zarr"), "--quick"])
    assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
    assert "ratio to raw" in capsys.readouterr().out

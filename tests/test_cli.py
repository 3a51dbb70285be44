"""The daskfeed command (ingest, info, bench) and the same as Python functions, on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import sorted_blobs, write_store

import daskfeed
from daskfeed.cli import main

pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def blobs(tmp_path):
    """2,000 label-sorted samples as x.npy / y.npy."""
    x, y = sorted_blobs(2000, dim=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path, x, y


@pytest.mark.slow
def test_console_script_is_installed_and_runs(blobs):
    tmp, x, _y = blobs
    exe = shutil.which("daskfeed", path=os.path.dirname(sys.executable))
    assert exe is not None, "the daskfeed console script is not installed beside this python"
    done = subprocess.run([exe, "ingest", tmp / "x.npy", tmp / "y.npy", tmp / "s.zarr"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "100% |" in done.stderr  # the progress bar, on stderr
    np.testing.assert_array_equal(zarr.open_array(str(tmp / "s.zarr/x"), mode="r")[:], x)


def test_ingest_then_info_warns_about_sorted_labels_until_shuffled(blobs, capsys):
    tmp, _x, _y = blobs
    code, out, _ = run(capsys, "ingest", tmp / "x.npy", tmp / "y.npy", tmp / "sorted.zarr", "--chunk-length", 100)
    assert code == 0 and "2,000 samples in chunks of 100, in source order" in out
    code, out, _ = run(capsys, "info", tmp / "sorted.zarr")
    assert code == 0 and "all fits the budget: decoded once" in out and "look sorted" not in out  # full shuffles
    code, out, _ = run(capsys, "info", tmp / "sorted.zarr", "--memory-budget", "20KB")
    assert code == 0
    assert "x      (2000, 8)  float32  (100, 8)" in out
    assert "labels 'y' look sorted or grouped along the sample axis" in out and "--shuffle" in out
    code, out, _ = run(
        capsys, "ingest", tmp / "x.npy", tmp / "y.npy", tmp / "mixed.zarr", "--chunk-length", 100, "--shuffle"
    )
    assert code == 0 and "shuffled (seed " in out
    code, out, _ = run(capsys, "info", tmp / "mixed.zarr", "--json", "--memory-budget", "20KB")
    report = json.loads(out)
    assert report["attrs"]["daskfeed"]["shuffled"] is True
    assert report["label_grouping"]["y"] < 0.1
    assert not any("sorted" in w for w in report["warnings"])


def test_info_flags_slow_layouts(tmp_path):
    rng = np.random.default_rng(0)
    write_store(tmp_path / "split.zarr", {"x": rng.normal(size=(4000, 64)).astype("f4")}, {"x": 2000})
    group = zarr.open_group(str(tmp_path / "split.zarr"), mode="r+")
    group.create_array("across", shape=(4000, 64), chunks=(2000, 16), dtype="f4")
    group.create_array("tiny", shape=(4000,), chunks=(10,), dtype="i4")
    report = daskfeed.info(tmp_path / "split.zarr", batch_size=32)
    text = "\n".join(report.warnings)
    assert "'across' is chunked along axis 1 too" in text and "every sample needs 4 chunk reads" in text
    assert "chunks of 10 samples are shorter than a batch of 32" in text
    small = daskfeed.info(tmp_path / "split.zarr", memory_budget="1MB")
    assert "reads_per_chunk=" in small.loader and "decode amplification" in small.loader
    assert any("the loader decodes" in w and "daskfeed ingest" in w and "--shuffle" in w for w in small.warnings)
    report = daskfeed.info(tmp_path / "split.zarr")
    assert [a.name for a in report.arrays] == ["across", "tiny", "x"]
    x = next(a for a in report.arrays if a.name == "x")
    assert x.decoded_bytes == 4000 * 64 * 4 and x.stored_bytes > 0 and x.ratio > 0


def test_info_on_an_image_store_shows_class_names(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 5, 3), 60 * i, "u1")).save(tmp_path / "imgs" / name / f"{i}.png")
    code, out, err = run(capsys, "ingest", tmp_path / "imgs", tmp_path / "img.zarr", "--quiet")
    assert code == 0 and err == ""
    assert "images: (6, 6, 5, 3) uint8" in out and "class_names: ['a', 'b']" in out
    code, out, _ = run(capsys, "info", tmp_path / "img.zarr")
    assert "class_names: ['a', 'b']" in out


def test_bench_reports_both_rates_and_whether_a_step_waits(tmp_path):
    x, y = sorted_blobs(6000, dim=16)
    store = write_store(tmp_path / "b.zarr", {"x": x, "y": y}, {"x": 500, "y": 500})
    result = daskfeed.bench(store, batch_size=50, step_ms=0.001, samples=3000, memory_budget="20KB")
    assert result.arrays == ("x", "y") and result.samples == 3000
    assert result.in_order_samples_per_s > 0 and result.daskfeed_samples_per_s > 0 and result.first_batch_s > 0
    # Whether a step waited is the machine's to say (never asserted): the verdict follows what was measured,
    # over one step per batch of the samples.
    assert result.step_ms == 0.001 and result.step_batches == 3000 // 50 and isinstance(result.input_bound, bool)
    verdict = "WAITS for data" if result.input_bound else "does not wait for data"
    assert verdict in str(result) and f"{result.step_batches} steps" in str(result) and "samples/s" in str(result)
    only_x = daskfeed.bench(store, batch_size=50, samples=1000, arrays=["x"])
    assert only_x.arrays == ("x",) and only_x.step_ms is None and only_x.input_bound is None


def test_bench_command(tmp_path, capsys):
    x, y = sorted_blobs(3000, dim=4)
    store = write_store(tmp_path / "b.zarr", {"x": x, "y": y}, {"x": 300, "y": 300})
    code, out, _ = run(capsys, "bench", store, "--batch-size", 30, "--step-ms", 2, "--samples", 1500, "--json")
    result = json.loads(out)
    assert code == 0 and result["step_ms"] == 2.0 and result["step_batches"] == 50
    assert isinstance(result["input_bound"], bool) and result["ratio"] > 0
    code, out, _ = run(capsys, "bench", store, "--samples", 600, "--reads-per-chunk", 2, "--memory-budget", "40KB")
    assert code == 0 and "reads_per_chunk=2" in out
    code, out, _ = run(capsys, "bench", store, "--samples", 600)
    assert code == 0 and "decoded once" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "{tmp}/missing.npy", "{tmp}/o.zarr"], "missing.npy' does not exist"),
        (["ingest", "x={tmp}/x.npy", "x={tmp}/wide.npy", "{tmp}/o.zarr"], "cannot put the files of array 'x'"),
        (["ingest", "{tmp}/x.npy", "{tmp}/exists.zarr"], "already exists; pass overwrite=True (--overwrite)"),
        (["info", "{tmp}/nowhere.zarr"], "store '{tmp}/nowhere.zarr' does not exist"),
        (["info", "{tmp}/x.npy"], "is not a zarr store"),
        (["bench", "{tmp}/exists.zarr", "--arrays", "nope"], "has no array 'nope'"),
        (["bench", "{tmp}/exists.zarr", "--step-ms", "-1"], "--step-ms must be a positive number"),
        (["bench", "{tmp}/exists.zarr", "--reads-per-chunk", "many"], "--reads-per-chunk must be 'auto' or an int"),
    ],
)
def test_bad_input_exits_non_zero_with_the_reason(blobs, capsys, argv, message):
    tmp, _x, _y = blobs
    np.save(tmp / "wide.npy", np.zeros((10, 9), "f4"))
    daskfeed.ingest([tmp / "y.npy"], tmp / "exists.zarr")
    before = sorted(os.listdir(tmp))
    code, out, err = run(capsys, *[a.format(tmp=tmp) for a in argv])
    assert code == 1 and out == ""
    assert message.format(tmp=tmp) in err and err.startswith(f"daskfeed {argv[0]}: error: ")
    assert sorted(os.listdir(tmp)) == before  # nothing written, nothing half-written


def test_failed_ingest_says_how_to_finish(tmp_path, capsys):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((4 + i, 4, 3), "u1")).save(tmp_path / "imgs" / "a" / f"{i}.png")
    code, _out, err = run(capsys, "ingest", tmp_path / "imgs", tmp_path / "o.zarr", "--chunk-length", 1, "--quiet")
    assert code == 1 and "--image-size H W" in err
    assert "was not written; the part done so far is kept in" in err and not (tmp_path / "o.zarr").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["ingest"])
    assert stop.value.code == 2 and "the following arguments are required" in capsys.readouterr().err


def test_info_names_an_array_that_cannot_become_a_tensor(tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("x", data=np.zeros((100, 3), "f4"), chunks=(50, 3))
    group.create_array("names", data=np.array([f"n{i}" for i in range(100)]), chunks=(50,))
    code, out, err = run(capsys, "info", tmp_path / "s.zarr")
    assert code == 0 and "Traceback" not in err
    assert "'names' has dtype" in out and "cannot become a tensor" in out and "loader: " in out
    with pytest.raises(daskfeed.InputTypeError, match=r"x\['names'\] has dtype .* which cannot become a tensor"):
        daskfeed.Loader(daskfeed.open_zarr(tmp_path / "s.zarr"))
    code, _, err = run(capsys, "bench", tmp_path / "s.zarr", "--arrays", "x", "names")
    assert code == 1 and "'names'] has dtype" in err and "cannot become a tensor" in err

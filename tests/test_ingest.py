"""daskfeed ingest on real files: .npy, .npz, HDF5 and a folder of images, in order and shuffled, and when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import daskfeed
from daskfeed.tools import ingest as ingest_mod
from daskfeed.tools.ingest import partial_path, permutation

h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def npy(tmp_path):
    """x (1001, 4, 3) float32 and y = row index, as two .npy files; x also split in three parts."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1001, 4, 3)).astype("f4")
    y = np.arange(1001, dtype="i8")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for i, (lo, hi) in enumerate([(0, 300), (300, 301), (301, 1001)]):
        np.save(tmp_path / f"part_{i}.npy", x[lo:hi])
    return tmp_path, x, y


def read(store):
    group = zarr.open_group(str(store), mode="r")
    return {name: arr[:] for name, arr in group.arrays()}, group


def test_npy_files_become_arrays_named_after_them_with_one_chunk_length(npy):
    tmp, x, y = npy
    report = daskfeed.ingest([tmp / "x.npy", tmp / "y.npy"], tmp / "out.zarr", chunk_length=128)
    data, group = read(tmp / "out.zarr")
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)
    assert group["x"].chunks == (128, 4, 3) and group["y"].chunks == (128,)  # other axes whole, same length
    assert report.samples == 1001 and report.chunks_written == 8 and report.chunks_resumed == 0
    assert report.stored_bytes > 0 and report.decoded_bytes == x.nbytes + y.nbytes
    assert group.attrs["daskfeed"]["shuffled"] is False
    assert "blosc" in type(group["x"].compressors[0]).__name__.lower()  # compressed by default
    assert not os.path.exists(partial_path(tmp / "out.zarr"))
    # the store feeds a loader as it is
    arrays = daskfeed.open_zarr(tmp / "out.zarr")
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0) as loader:
        seen = np.concatenate([b[1] for b in loader])
    assert sorted(seen) == list(range(1001))


def test_files_named_alike_are_put_end_to_end_and_globs_expand_sorted(npy):
    tmp, x, _y = npy
    parts = [f"x={tmp / f'part_{i}.npy'}" for i in range(3)]
    daskfeed.ingest([*parts, tmp / "y.npy"], tmp / "a.zarr", chunk_length=100)
    np.testing.assert_array_equal(read(tmp / "a.zarr")[0]["x"], x)
    daskfeed.ingest([f"x={tmp}/part_*.npy", f"label={tmp / 'y.npy'}"], tmp / "b.zarr", chunk_length=100)
    data = read(tmp / "b.zarr")[0]
    np.testing.assert_array_equal(data["x"], x)
    assert sorted(data) == ["label", "x"]


def test_chunk_length_follows_chunk_bytes_over_all_arrays(npy):
    tmp, _x, _y = npy
    per_sample = 4 * 3 * 4 + 8
    report = daskfeed.ingest([tmp / "x.npy", tmp / "y.npy"], tmp / "c.zarr", chunk_bytes=per_sample * 50)
    assert report.chunk_length == 50
    report = daskfeed.ingest([tmp / "x.npy"], tmp / "d.zarr", chunk_bytes="1MiB")
    assert report.chunk_length == 1001  # never longer than the array
    report = daskfeed.ingest([tmp / "x.npy"], tmp / "e.zarr", compression="none", chunk_length=200)
    # No compressor; the checksum stays, so a corrupt chunk still fails to decode.
    assert [type(c).__name__ for c in zarr.open_array(str(tmp / "e.zarr/x"), mode="r").compressors] == ["Crc32cCodec"]


def test_npz_stored_and_compressed_members(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (777, 5, 6), dtype="u1")
    y = rng.integers(0, 3, 777)
    xf = np.asfortranarray(rng.normal(size=(777, 2)))
    np.savez(tmp_path / "s.npz", x=x, y=y, xf=xf)  # stored: memory-mapped, Fortran order included
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)  # compressed: streamed
    for name in ("s", "c"):
        daskfeed.ingest([tmp_path / f"{name}.npz"], tmp_path / f"{name}.zarr", chunk_length=100)
        data = read(tmp_path / f"{name}.zarr")[0]
        np.testing.assert_array_equal(data["x"], x)
        np.testing.assert_array_equal(data["y"], y)
    np.testing.assert_array_equal(read(tmp_path / "s.zarr")[0]["xf"], xf)
    # NAME= on a .npz prefixes its members
    daskfeed.ingest([f"train={tmp_path / 'c.npz'}"], tmp_path / "p.zarr", chunk_length=100)
    assert list(zarr.open_group(str(tmp_path / "p.zarr"), mode="r").group_keys()) == ["train"]
    assert sorted(zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["train"].array_keys()) == ["x", "y"]


def test_hdf5_every_dataset_or_one(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 8)).astype("f4")
    y = rng.integers(0, 5, 500)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x
        f.create_dataset("meta/y", data=y, chunks=(64,), compression="gzip")
    daskfeed.ingest([tmp_path / "d.h5"], tmp_path / "all.zarr", chunk_length=64)
    group = zarr.open_group(str(tmp_path / "all.zarr"), mode="r")
    np.testing.assert_array_equal(group["x"][:], x)
    np.testing.assert_array_equal(group["meta/y"][:], y)
    daskfeed.ingest([f"labels={tmp_path / 'd.h5'}:meta/y"], tmp_path / "one.zarr", chunk_length=64)
    np.testing.assert_array_equal(read(tmp_path / "one.zarr")[0]["labels"], y)
    with pytest.raises(daskfeed.InputError, match="has no dataset 'nope'"):
        daskfeed.ingest([f"{tmp_path / 'd.h5'}:nope"], tmp_path / "bad.zarr")
    with pytest.raises(daskfeed.InputError, match="holds 2 datasets"):
        daskfeed.ingest([f"z={tmp_path / 'd.h5'}"], tmp_path / "bad.zarr")


def write_images(root, sizes=((20, 24), (20, 24), (31, 17)), per_class=5):
    """Real PNG and JPEG files, one sub-folder per class, brightness by class; sizes cycle per file."""
    rng = np.random.default_rng(3)
    for label, name in enumerate(["ants", "bees", "cats"]):
        folder = root / name / ("nested" if label == 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            pixels = np.clip(rng.normal(40 + 80 * label, 10, (h, w, 3)), 0, 255).astype("u1")
            Image.fromarray(pixels).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (root / "ants" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_resized_with_labels_and_class_names(tmp_path):
    root = write_images(tmp_path / "images")
    report = daskfeed.ingest([root], tmp_path / "img.zarr", image_size=(16, 12), chunk_length=4)
    data, group = read(tmp_path / "img.zarr")
    assert data["images"].shape == (15, 16, 12, 3) and data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["labels"], np.repeat([0, 1, 2], 5))
    assert report.class_names == ["ants", "bees", "cats"] == group.attrs["class_names"]
    assert group["labels"].attrs["class_names"] == ["ants", "bees", "cats"]
    means = [data["images"][data["labels"] == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]  # the pixels are the files', in the class order
    gray = daskfeed.ingest([root], tmp_path / "gray.zarr", image_size=(8, 8), color_mode="grayscale")
    assert gray.arrays["images"] == ((15, 8, 8, 1), "uint8")


def test_images_of_one_size_need_no_resize_and_mixed_sizes_say_how(tmp_path):
    root = write_images(tmp_path / "same", sizes=((10, 11),))
    assert daskfeed.ingest([root], tmp_path / "a.zarr").arrays["images"] == ((15, 10, 11, 3), "uint8")
    mixed = write_images(tmp_path / "mixed")
    with pytest.raises(daskfeed.InputError, match=r"is 31x17 .* first image is 20x24; pass image_size"):
        daskfeed.ingest([mixed], tmp_path / "b.zarr")
    assert not os.path.exists(tmp_path / "b.zarr")


def test_shuffled_ingest_is_one_permutation_for_every_array_and_seeded(npy):
    tmp, x, _y = npy
    sources = [tmp / "x.npy", tmp / "y.npy"]
    # a memory of ~300 samples: 4 buckets, so the scatter and the placing really go through disk
    report = daskfeed.ingest(sources, tmp / "s.zarr", shuffle=True, seed=7, chunk_length=100, memory=2 * 300 * 64)
    data, group = read(tmp / "s.zarr")
    assert sorted(data["y"].tolist()) == list(range(1001))  # every sample exactly once
    np.testing.assert_array_equal(data["x"], x[data["y"]])  # rows stay together across arrays
    assert np.abs(np.diff(data["y"])).mean() > 100  # far from the source order
    assert report.shuffled and report.seed == 7
    assert group.attrs["daskfeed"] == {**group.attrs["daskfeed"], "shuffled": True, "seed": 7}
    daskfeed.ingest(sources, tmp / "t.zarr", shuffle=True, seed=7, chunk_length=100)
    np.testing.assert_array_equal(read(tmp / "t.zarr")[0]["y"], data["y"])  # the seed decides, not the memory
    other = daskfeed.ingest(sources, tmp / "u.zarr", shuffle=True, seed=8, chunk_length=100)
    assert other.seed == 8 and not np.array_equal(read(tmp / "u.zarr")[0]["y"], data["y"])


def test_loader_reads_shuffled_stores_once_per_chunk_by_default(npy):
    tmp, _x, _y = npy
    sources = [tmp / "x.npy", tmp / "y.npy"]
    daskfeed.ingest(sources, tmp / "plain.zarr", chunk_length=100)
    daskfeed.ingest(sources, tmp / "mixed.zarr", chunk_length=100, shuffle=True, seed=0)
    budget = 3 * 56 * 450  # a window of ~450 samples: 4 chunks, too few to mix a store in source order
    reads = {}
    for name in ("plain.zarr", "mixed.zarr"):
        arrays = daskfeed.open_zarr(tmp / name)
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=10, memory_budget=budget, seed=0)
        reads[name] = loader.reads_per_chunk
    assert reads["plain.zarr"] > 1 and reads["mixed.zarr"] == 1


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31))
def test_permutation_is_a_bijection(n, seed):
    placed = permutation(np.arange(n), n, seed)
    assert sorted(placed.tolist()) == list(range(n))
    np.testing.assert_array_equal(permutation(np.arange(n)[::-1], n, seed), placed[::-1])  # blockwise = whole


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda t: [t / "missing.npy"], "missing.npy' does not exist"),
        (lambda t: [f"x={t}/nothing_*.npy"], "no file matches"),
        (lambda t: [f"x={t / 'x.npy'}", f"x={t / 'other_shape.npy'}"], r"cannot put the files of array 'x' end to end"),
        (lambda t: [f"x={t / 'x.npy'}", f"x={t / 'other_dtype.npy'}"], r"\(1001, 4, 3\) float32 .* float64"),
        (lambda t: [t / "x.npy", t / "short.npy"], r"same number of samples .* 'x' 1001, 'short' 10"),
        (lambda t: [t / "notes.csv"], "cannot tell how to read it"),
        (lambda t: [t / "objects.npy"], r"cannot read .*objects.npy' as a .npy file"),
        (lambda t: [t / "zero.npy"], r"cannot read .*zero.npy' as a .npy file: it is empty \(0 bytes\)"),
        (lambda t: [t / "empty"], "has no sub-folder"),
        (lambda t: ["bad name=x.npy"], "is not an array name"),
    ],
)
def test_bad_sources_say_what_and_write_nothing(npy, make, match):
    tmp, _x, _y = npy
    np.save(tmp / "other_shape.npy", np.zeros((5, 4, 4), "f4"))
    np.save(tmp / "other_dtype.npy", np.zeros((5, 4, 3), "f8"))
    np.save(tmp / "short.npy", np.zeros(10))
    np.save(tmp / "objects.npy", np.array([{"a": 1}] * 3, dtype=object))
    (tmp / "notes.csv").write_text("a,b\n")
    (tmp / "zero.npy").write_bytes(b"")
    (tmp / "empty").mkdir()
    with pytest.raises(daskfeed.InputError, match=match):
        daskfeed.ingest(make(tmp), tmp / "out.zarr")
    assert not os.path.exists(tmp / "out.zarr") and not os.path.exists(partial_path(tmp / "out.zarr"))


def test_bad_knobs_name_the_argument(npy):
    tmp, _x, _y = npy
    for kwargs, match in [
        (dict(compression="gzip"), "compression must be one of zstd, lz4, none, got 'gzip'"),
        (dict(chunk_length=0), "chunk_length and workers must be at least 1"),
        (dict(image_size=(0, 3)), r"image_size must be \(height, width\)"),
        (dict(color_mode="cmyk"), "color_mode must be one of"),
        (dict(chunk_bytes="lots"), "chunk_bytes='lots' is not a size"),
    ]:
        with pytest.raises(daskfeed.InputError, match=match):
            daskfeed.ingest([tmp / "x.npy"], tmp / "out.zarr", **kwargs)


def test_unreadable_image_stops_the_ingest_without_a_store(tmp_path):
    root = write_images(tmp_path / "images")
    (root / "bees" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(daskfeed.InputError, match=r"cannot read image .*zz_broken.png"):
        daskfeed.ingest([root], tmp_path / "img.zarr", image_size=(8, 8), chunk_length=2)
    assert not os.path.exists(tmp_path / "img.zarr")
    with pytest.raises(daskfeed.StoreError):
        daskfeed.open_zarr(tmp_path / "img.zarr")


def test_existing_dest_needs_overwrite_and_survives_until_the_new_store_is_complete(npy):
    tmp, _x, y = npy
    daskfeed.ingest([tmp / "y.npy"], tmp / "out.zarr")
    with pytest.raises(daskfeed.InputError, match="already exists; pass overwrite=True"):
        daskfeed.ingest([tmp / "x.npy"], tmp / "out.zarr")
    np.save(tmp / "bad.npy", np.zeros(3))
    with pytest.raises(daskfeed.InputError):  # a failed overwrite keeps the old store
        daskfeed.ingest([tmp / "x.npy", tmp / "bad.npy"], tmp / "out.zarr", overwrite=True)
    np.testing.assert_array_equal(read(tmp / "out.zarr")[0]["y"], y)
    daskfeed.ingest([tmp / "x.npy"], tmp / "out.zarr", overwrite=True)
    assert sorted(read(tmp / "out.zarr")[0]) == ["x"]


READS: list[int] = []
ALLOWED = [10**9]


def read_until_stopped(block, block_info=None):
    """A user's dask work on each block: counts the reads, and stops the ingest as Ctrl-C would."""
    READS.append(block_info[0]["array-location"][0][0])
    if len(READS) > ALLOWED[0]:
        raise KeyboardInterrupt
    return block


def stoppable(x, allowed):
    """x as a dask array of 100-sample blocks that lets ``allowed`` block reads through (a stable dask name)."""
    import dask.array as da

    READS.clear()
    ALLOWED[0] = allowed
    return da.from_array(x, chunks=(100, 4, 3), name="x-source").map_blocks(read_until_stopped, dtype=x.dtype)


def test_interrupted_ingest_leaves_no_store_and_a_rerun_finishes_it(npy):
    tmp, x, y = npy
    with pytest.raises(KeyboardInterrupt):
        daskfeed.ingest({"x": stoppable(x, 3), "y": y}, tmp / "out.zarr", chunk_length=100, workers=1)
    assert not os.path.exists(tmp / "out.zarr") and len(READS) == 4
    assert os.path.exists(partial_path(tmp / "out.zarr"))
    report = daskfeed.ingest({"x": stoppable(x, 10**9), "y": y}, tmp / "out.zarr", chunk_length=100)
    assert report.chunks_resumed == 3 and report.chunks_written == 8
    assert sorted(READS) == list(range(300, 1001, 100))  # only the chunks not yet written
    data = read(tmp / "out.zarr")[0]
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)
    assert not os.path.exists(partial_path(tmp / "out.zarr"))


def test_changed_arguments_restart_an_interrupted_ingest(npy):
    tmp, x, _y = npy
    with pytest.raises(KeyboardInterrupt):
        daskfeed.ingest({"x": stoppable(x, 2)}, tmp / "out.zarr", chunk_length=100, workers=1)
    report = daskfeed.ingest({"x": stoppable(x, 10**9)}, tmp / "out.zarr", chunk_length=90)
    assert report.chunks_resumed == 0 and report.chunk_length == 90
    np.testing.assert_array_equal(read(tmp / "out.zarr")[0]["x"], x)


def test_interrupted_shuffle_resumes_after_its_scatter(npy, monkeypatch):
    """Stopped while placing buckets (the journal's third bucket mark raises, as Ctrl-C there would)."""
    tmp, x, y = npy
    placed = []
    original = ingest_mod._Journal.mark

    def mark(journal, step):
        if step.startswith("bucket") and len(placed) == 2:
            raise KeyboardInterrupt
        placed.append(step) if step.startswith("bucket") else None
        original(journal, step)

    monkeypatch.setattr(ingest_mod._Journal, "mark", mark)
    kwargs = dict(shuffle=True, seed=3, chunk_length=100, memory=2 * 300 * 64)
    with pytest.raises(KeyboardInterrupt):
        daskfeed.ingest({"x": stoppable(x, 10**9), "y": y}, tmp / "s.zarr", **kwargs)
    monkeypatch.undo()
    report = daskfeed.ingest({"x": stoppable(x, 10**9), "y": y}, tmp / "s.zarr", **kwargs)
    assert READS == []  # the scatter was done: no source read again
    assert report.chunks_resumed == 6  # two buckets of three chunks each were placed before the stop
    data = read(tmp / "s.zarr")[0]
    np.testing.assert_array_equal(data["x"], x[data["y"]])
    assert sorted(data["y"].tolist()) == list(range(1001))


@pytest.mark.slow
def test_killed_command_leaves_no_store_and_rerunning_finishes(tmp_path):
    """The real command, killed with SIGKILL mid-way: nothing at DEST; the same command again completes it."""
    x = np.random.default_rng(0).integers(0, 255, (3000, 64), dtype="u1")
    np.save(tmp_path / "x.npy", x)
    dest = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "daskfeed.cli", "ingest", str(tmp_path / "x.npy"), str(dest)]
    proc = subprocess.Popen([*command, "--chunk-length", "1", "--workers", "1", "--quiet"])
    journal = os.path.join(partial_path(dest), "journal")
    while proc.poll() is None and not (os.path.exists(journal) and os.path.getsize(journal) > 200):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the ingest ended (exit {proc.returncode}) before it could be killed; make it longer")
    assert not dest.exists()
    done = subprocess.run([*command, "--chunk-length", "1", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "were already written by an interrupted run" in done.stdout
    np.testing.assert_array_equal(zarr.open_array(str(dest / "x"), mode="r")[:], x)

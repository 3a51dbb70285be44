"""Missing chunk files: found by listing the store, warned about or refused, never served as zeros silently."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import daskfeed
from daskfeed.cli import main


def user_store(path):
    """A store as zarr's defaults write it: 5,000 samples, x by 1,000 and y by 1,000, nothing zero."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", data=np.arange(5000 * 4, dtype="f4").reshape(5000, 4) + 1, chunks=(1000, 4))
    group.create_array("y", data=np.arange(5000, dtype="i8") + 1, chunks=(1000,))
    return str(path)


def test_a_chunk_deleted_from_a_copy_is_warned_about_by_default_naming_array_chunk_and_samples(tmp_path):
    store = user_store(tmp_path / "s.zarr")
    os.remove(os.path.join(store, "x", "c", "2", "0"))  # a copy that stopped halfway
    arrays = daskfeed.open_zarr(store)
    with pytest.warns(daskfeed.DaskfeedWarning) as caught:
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0)
    message = str(caught[0].message)
    assert "x: 1 of 5 chunks missing ((2, 0)), samples 2000-2999" in message
    assert "samples 2000-2999 are missing in x but present in y" in message
    assert f"daskfeed info --verify {store}" in message
    # Warned, served as zarr serves them: the fill value, for exactly those samples.
    batches = list(loader)
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    zeros = (x == 0).all(axis=1)
    assert zeros.sum() == 1000 and set(y[zeros] - 1) == set(range(2000, 3000))


@pytest.mark.tf
@pytest.mark.parametrize("door", ["as_sequence", "as_dataset"])
def test_missing_chunks_error_refuses_the_store_in_both_doors(tmp_path, door):
    store = user_store(tmp_path / "s.zarr")
    os.remove(os.path.join(store, "x", "c", "4", "0"))
    os.remove(os.path.join(store, "y", "c", "1"))
    arrays = daskfeed.open_zarr(store)
    with pytest.raises(daskfeed.StoreError, match=r"x: 1 of 5 chunks missing.*y: 1 of 5 chunks missing") as info:
        getattr(daskfeed, door)(arrays["x"], arrays["y"], batch_size=100, missing_chunks="error")
    assert "samples 4000-4999 are missing in x but present in y" in str(info.value)
    assert "samples 1000-1999 are missing in y but present in x" in str(info.value)


def test_fill_serves_chunks_left_out_for_being_empty_without_a_word(tmp_path):
    """zarr 3 does not write a chunk that is all fill value: masks and padding are stores like that."""
    import zarr

    group = zarr.open_group(str(tmp_path / "masks.zarr"), mode="w")
    masks = np.zeros((3000, 8), "u1")
    masks[1000:2000] = 1  # chunks 0 and 2 are all zeros: zarr leaves them out
    group.create_array("x", data=masks, chunks=(1000, 8))
    assert sorted(os.listdir(tmp_path / "masks.zarr" / "x" / "c")) == ["1"]
    arrays = daskfeed.open_zarr(str(tmp_path / "masks.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = daskfeed.Loader(arrays["x"], batch_size=500, seed=0, missing_chunks="fill")
        assert np.concatenate(list(loader)).sum() == 8000
    with pytest.warns(daskfeed.DaskfeedWarning, match=r"x: 2 of 3 chunks missing \(\(0, 0\), \(2, 0\)\)"):
        daskfeed.Loader(arrays["x"], batch_size=500, seed=0)


def sorted_label_store(path):
    """As zarr's defaults write a store sorted by label: 20,000 images and labels (class c in samples
    2000c..2000c+1999), chunks of 1,000; zarr leaves out label chunks 0 and 1, all class 0 (the fill value)."""
    import zarr

    rng = np.random.default_rng(0)
    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", data=rng.integers(1, 256, (20_000, 4, 4), dtype="u1"), chunks=(1000, 4, 4))
    group.create_array("y", data=np.repeat(np.arange(10), 2000), chunks=(1000,))
    assert sorted(os.listdir(path / "y" / "c"), key=int) == [str(c) for c in range(2, 20)]
    return str(path)


def test_label_chunks_zarr_leaves_out_for_holding_the_fill_value_are_not_called_damage(tmp_path):
    store = sorted_label_store(tmp_path / "sorted.zarr")
    arrays = daskfeed.open_zarr(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=500, seed=0)
        labels = np.concatenate([y for _, y in loader])
    assert np.array_equal(np.bincount(labels), [2000] * 10)
    assert main(["info", "--verify", store]) == 1  # listed all the same, for whoever asks
    with pytest.raises(daskfeed.StoreError, match="y: 2 of 20 chunks missing"):
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=500, seed=0, missing_chunks="error")


@pytest.mark.parametrize(
    "lost",
    [
        ["x/c/7/0/0"],  # an image chunk: images are the heaviest array
        ["y/c/7", "y/c/8", "y/c/9"],  # the last label chunks in the order cp, rsync and uploads copy keys
        ["y/c/18", "y/c/19"],  # the last label chunks in chunk order: a writer stopped before the end
    ],
)
def test_chunks_lost_as_a_halfway_copy_loses_them_are_still_warned_about(tmp_path, lost):
    store = sorted_label_store(tmp_path / "sorted.zarr")
    for key in lost:
        os.remove(os.path.join(store, *key.split("/")))
    arrays = daskfeed.open_zarr(store)
    with pytest.warns(daskfeed.DaskfeedWarning, match="chunks missing from the store") as caught:
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=500, seed=0)
    assert f"{lost[0][0]}: " in str(caught[0].message)


def test_a_store_daskfeed_ingest_wrote_has_every_chunk_and_a_checksum(tmp_path):
    """ingest writes all-zero chunks too and a crc32c: a missing chunk is an error even by default, and a
    flipped byte is a ChunkReadError, never zeros or garbage."""
    x = np.zeros((300, 4), "f4")  # every chunk holds only the fill value
    x[250:] = 1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(300))
    dest = str(tmp_path / "t.zarr")
    daskfeed.ingest([str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], dest, chunk_length=100)
    assert sorted(os.listdir(os.path.join(dest, "x", "c"))) == ["0", "1", "2"]
    arrays = daskfeed.open_zarr(dest)
    assert "crc32c" in daskfeed.info(dest).arrays[0].compressors
    chunk = os.path.join(dest, "y", "c", "2")
    with open(chunk, "r+b") as f:  # one flipped byte in the middle of a chunk
        f.seek(os.path.getsize(chunk) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(daskfeed.ChunkReadError, match=r"array y chunk 2 .*checksum"):
        list(daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50, seed=0, memory_budget="8KB"))
    os.remove(os.path.join(dest, "x", "c", "1", "0"))
    with pytest.raises(daskfeed.StoreError, match="x written by daskfeed ingest, which writes every chunk"):
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50, seed=0)


def test_info_verify_lists_missing_chunks_aligned_across_arrays_and_exits_1(tmp_path, capsys):
    store = user_store(tmp_path / "s.zarr")
    assert main(["info", "--verify", store]) == 0
    assert "missing chunks: none, every chunk of every array is in the store" in capsys.readouterr().out
    os.remove(os.path.join(store, "x", "c", "3", "0"))
    assert main(["info", "--verify", store]) == 1
    out = capsys.readouterr().out
    assert "warning: x: 1 of 5 chunks missing ((3, 0)), samples 3000-3999" in out
    assert "samples 3000-3999 are missing in x but present in y" in out
    assert main(["info", "--verify", "--json", store]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == {"x": [[3, 0]], "y": []}
    assert main(["info", store]) == 0  # without --verify the store is not listed
    assert "chunks missing" not in capsys.readouterr().out


def test_missing_chunks_is_checked_like_every_knob():
    with pytest.raises(daskfeed.InputError, match="missing_chunks must be one of 'warn', 'error', 'fill', got 'no'"):
        daskfeed.LoaderOptions(missing_chunks="no")
    with pytest.raises(daskfeed.InputError, match="no_workers_timeout must be a positive number of seconds"):
        daskfeed.LoaderOptions(no_workers_timeout=0)
    with pytest.raises(TypeError, match="no_workers_timeout must be a number of seconds, got '60'"):
        daskfeed.LoaderOptions(no_workers_timeout="60")


@pytest.mark.slow
def test_an_http_store_cannot_be_listed_so_warn_skips_it_and_error_refuses_it(tmp_path, http_root):
    pytest.importorskip("aiohttp")
    user_store(tmp_path / "s.zarr")
    os.remove(tmp_path / "s.zarr" / "x" / "c" / "2" / "0")
    arrays = daskfeed.open_zarr(f"{http_root}/s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0)
    with pytest.raises(daskfeed.StoreError, match="cannot be checked for x, y: an HTTP store cannot be listed"):
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0, missing_chunks="error")


def test_a_store_that_refuses_listing_is_warned_about_not_a_crash(tmp_path):
    """Like S3 credentials without ListBucket: reading works, listing fails."""
    import zarr
    from zarr.storage import LocalStore, WrapperStore

    class NoListing(WrapperStore):
        async def list_prefix(self, prefix):
            raise PermissionError("AccessDenied: s3:ListBucket")
            yield  # an async generator, as zarr's stores are

    user_store(tmp_path / "s.zarr")
    group = zarr.open_group(store=NoListing(LocalStore(str(tmp_path / "s.zarr"), read_only=True)), mode="r")
    arrays = daskfeed.open_zarr(group)
    with pytest.warns(daskfeed.DaskfeedWarning, match=r"cannot check x for missing chunks: .*ListBucket"):
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0)
    assert sum(len(b[1]) for b in loader) == 5000
    with pytest.raises(daskfeed.StoreError, match="missing_chunks='error' cannot be checked for x: listing"):
        daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0, missing_chunks="error")


# -- a store replaced under a loader ---------------------------------------------------------------------------


def ingest_command(tmp_path, dest, seed):
    """The command that writes ``dest`` from x.npy (row r is r everywhere) and y.npy (r), shuffled with ``seed``."""
    import sys

    if not (tmp_path / "x.npy").exists():
        n = 6000
        np.save(tmp_path / "x.npy", np.repeat(np.arange(n, dtype="f4")[:, None], 256, axis=1))
        np.save(tmp_path / "y.npy", np.arange(n, dtype="i8"))
    sources = [f"x={tmp_path / 'x.npy'}", f"y={tmp_path / 'y.npy'}"]
    flags = ["--shuffle", "--seed", str(seed), "--chunk-length", "250", "--overwrite", "--quiet"]
    return [sys.executable, "-m", "daskfeed.cli", "ingest", *sources, str(dest), *flags]


def paired(batch):
    x, y = batch
    np.testing.assert_array_equal(x[:, 0], y)  # x of one sample with y of the same sample, never another's
    return len(y)


@pytest.mark.slow
def test_a_store_replaced_under_a_loader_fails_the_next_read_and_never_mixes_versions(tmp_path):
    import subprocess

    dest = tmp_path / "out.zarr"
    subprocess.run(ingest_command(tmp_path, dest, seed=1), check=True)
    arrays = daskfeed.open_zarr(str(dest))
    # y is held whole (read once), x read window by window: the pairing a replaced store would break.
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0, memory_budget="1.2MB") as loader:
        assert "y" in " ".join(loader.layout.held) and loader.plan().n_windows > 8
        batches = iter(loader)
        served = sum(paired(next(batches)) for _ in range(10))
        subprocess.run(ingest_command(tmp_path, dest, seed=7), check=True)  # another process replaces the store
        with pytest.raises(daskfeed.StoreError, match=r"changed while this loader was reading it.*make a new loader"):
            for batch in batches:
                served += paired(batch)  # windows read before the swap may still be served: they are whole
        assert served < 6000
    # A loader made on arrays opened before the swap refuses at once: their metadata is the old store's.
    stale = daskfeed.open_zarr(str(dest))
    subprocess.run(ingest_command(tmp_path, dest, seed=8), check=True)
    with pytest.raises(daskfeed.StoreError, match="changed while this loader"):
        daskfeed.Loader(stale["x"], stale["y"], batch_size=100, seed=0, memory_budget="1.2MB")
    # A new loader reads the new store.
    fresh = daskfeed.open_zarr(str(dest))
    with daskfeed.Loader(fresh["x"], fresh["y"], batch_size=100, seed=0, memory_budget="1.2MB") as loader:
        assert sum(paired(b) for b in loader) == 6000


@pytest.mark.slow
def test_a_loader_racing_a_real_overwrite_finishes_on_the_old_data_or_raises(tmp_path):
    import subprocess

    dest = tmp_path / "out.zarr"
    subprocess.run(ingest_command(tmp_path, dest, seed=1), check=True)
    arrays = daskfeed.open_zarr(str(dest))
    writer = subprocess.Popen(ingest_command(tmp_path, dest, seed=7))
    outcomes = []
    try:
        while writer.poll() is None or len(outcomes) < 2:  # epochs while the writer runs, and one after
            try:  # made on arrays opened before the writer started: refused at once once it has committed
                with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=100, seed=0, memory_budget="1.2MB") as loader:
                    outcomes.append(sum(paired(b) for b in loader))
            except daskfeed.StoreError:
                outcomes.append("replaced")
                break
    finally:
        assert writer.wait() == 0
    assert all(o in (6000, "replaced") for o in outcomes)

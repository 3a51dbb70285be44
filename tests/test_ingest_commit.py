"""daskfeed ingest killed at every step of its commit, or out of disk, then run again: a complete store, never less."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
import zarr

import daskfeed
from daskfeed.cli import main
from daskfeed.errors import DiskFullError
from daskfeed.tools import ingest as ingest_mod
from daskfeed.tools.ingest import KILL_AFTER_ENV, partial_path, stopped_message

#: The steps of a commit, in order (see daskfeed/tools/ingest.py, KILL_AFTER_ENV); a kill after the last one leaves
#: the work folder with its manifest only.
COMMIT_STEPS = [
    "attrs",
    "complete",
    "old-moved",
    "store-moved",
    "old-removing",
    "old-removed",
    "partial-removing",
]
#: 2,000 samples in chunks of 100, shuffled through 10 buckets of 200 (--memory 40KB: 80 bytes a sample, twice).
OPTIONS = ["--chunk-length", "100", "--shuffle", "--memory", "40KB", "--quiet"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """x (2000, 64) uint8 and y = row index as .npy files, and an old store of other arrays."""
    tmp = tmp_path_factory.mktemp("sources")
    x = np.random.default_rng(0).integers(0, 255, (2000, 64), dtype="u1")
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", np.arange(2000, dtype="i8"))
    old = np.random.default_rng(1).normal(size=(300, 5)).astype("f4")
    np.save(tmp / "old.npy", old)
    return tmp, x, old


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The store an uninterrupted ``ingest ... --seed 3`` writes."""
    tmp, _x, _old = sources
    dest = tmp_path_factory.mktemp("reference") / "ref.zarr"
    assert main(["ingest", str(tmp / "x.npy"), str(tmp / "y.npy"), str(dest), *OPTIONS, "--seed", "3"]) == 0
    return dest


def command(tmp, dest, *extra):
    return [sys.executable, "-m", "daskfeed.cli", "ingest", str(tmp / "x.npy"), str(tmp / "y.npy"), str(dest), *extra]


def killed_after(step, argv):
    """Run the real command until it SIGKILLs itself right after ``step``; its output."""
    done = subprocess.run(argv, env={**os.environ, KILL_AFTER_ENV: step}, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, f"not killed after {step!r} (exit {done.returncode}): {done.stderr}"
    return done


def rerun(capsys, argv):
    """The same command again, without the hook (in this process: the same code as the console script)."""
    code = main([str(a) for a in argv[3:]])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def store_files(store):
    """Every file of a store: chunks as bytes, metadata as JSON without the commit id (new for every store)."""
    files = {}
    for folder, _dirs, names in os.walk(store):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            if name == "zarr.json":
                meta = json.loads(data)
                meta.get("attributes", {}).get("daskfeed", {}).pop("commit", None)
                data = meta
            files[os.path.relpath(path, store)] = data
    return files


def commits(store):
    """The commit ids of the store and of each of its arrays."""
    group = zarr.open_group(str(store), mode="r")
    return {"": group.attrs["daskfeed"]["commit"], **{n: a.attrs["daskfeed"]["commit"] for n, a in group.arrays()}}


def assert_new_store(dest, reference, x):
    """``dest`` holds the shuffled store, bit for bit what the uninterrupted run wrote, every sample once."""
    assert store_files(dest) == store_files(reference)
    data = {name: a[:] for name, a in zarr.open_group(str(dest), mode="r").arrays()}
    assert sorted(data["y"].tolist()) == list(range(len(x)))
    np.testing.assert_array_equal(data["x"], x[data["y"]])
    ids = set(commits(dest).values())
    assert len(ids) == 1 and re.fullmatch("[0-9a-f]{32}", ids.pop())  # one commit id, in every array too


def assert_old_store(path, old, commit):
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["old"][:], old)
    assert group.attrs["daskfeed"]["commit"] == commit


def assert_no_leftovers(dest):
    assert sorted(os.listdir(os.path.dirname(dest))) == [os.path.basename(dest)]


@pytest.mark.slow
@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_killed_at_any_step_of_the_commit_the_same_command_finishes_it(sources, reference, tmp_path, capsys, step):
    tmp, x, old = sources
    dest = tmp_path / "out.zarr"
    before = daskfeed.ingest([tmp / "old.npy"], dest, chunk_length=64)  # a different store, to be replaced
    argv = command(tmp, dest, *OPTIONS, "--seed", "3", "--overwrite")
    killed_after(step, argv)
    # Never less than a complete store: the old one until the new one is complete and in place.
    if step in ("attrs", "complete"):
        assert_old_store(dest, old, before.commit)
        message = stopped_message(dest, "interrupted")
        assert {"attrs": "was not written", "complete": "the new store is complete in"}[step] in message
        assert "Run the same command again" in message
    elif step == "old-moved":  # between the renames: the old store waits aside, the new one is complete
        assert not dest.exists()
        assert_old_store(f"{dest}.daskfeed-old", old, before.commit)
        assert "while replacing" in stopped_message(dest, "interrupted")
    else:
        assert_new_store(dest, reference, x)
        assert "is complete (this run wrote it)" in stopped_message(dest, "interrupted")
    out, _err = rerun(capsys, argv)
    assert_new_store(dest, reference, x)
    assert before.commit not in commits(dest).values()
    assert_no_leftovers(dest)
    assert "2,000 samples in chunks of 100, shuffled (seed 3)" in out
    assert "20 chunk rows were already written by an interrupted run" in out  # all of them, before the kill


@pytest.mark.slow
@pytest.mark.parametrize("step", ["scattered", "bucket 1"])
def test_a_drawn_seed_is_kept_by_the_rerun(sources, tmp_path, capsys, step):
    """Killed while scattering or placing with no --seed: the rerun goes on with the seed the first run drew."""
    tmp, x, _old = sources
    dest = tmp_path / "out.zarr"
    argv = command(tmp, dest, *OPTIONS)
    killed_after(step, argv)
    said = re.search(r"goes on with the seed it drew, (\d+)", stopped_message(dest, "interrupted"))
    # What zarr leaves of a chunk write stopped midway (its LocalStore's temporary name): gone from the result.
    stray = os.path.join(partial_path(dest), "store.zarr", "x", "c", "0", f"0.{uuid.uuid4().hex}.partial")
    os.makedirs(os.path.dirname(stray), exist_ok=True)
    with open(stray, "wb") as f:
        f.write(b"half a chunk")
    out, _err = rerun(capsys, argv)
    seed = int(re.search(r"resuming the interrupted ingest with its drawn seed (\d+)", out).group(1))
    assert f"shuffled (seed {seed})" in out and int(said.group(1)) == seed
    assert zarr.open_group(str(dest), mode="r").attrs["daskfeed"]["seed"] == seed
    assert not [f for _d, _s, files in os.walk(dest) for f in files if f.endswith(".partial")]
    again = tmp_path / "again.zarr"
    assert main([str(a) for a in command(tmp, again, *OPTIONS, "--seed", str(seed))[3:]]) == 0
    assert_new_store(dest, again, x)
    assert sorted(os.listdir(tmp_path)) == ["again.zarr", "out.zarr"]


@pytest.mark.slow
def test_a_rerun_with_another_seed_starts_afresh(sources, tmp_path, capsys):
    tmp, x, _old = sources
    dest = tmp_path / "out.zarr"
    killed_after("bucket 1", command(tmp, dest, *OPTIONS))
    out, _err = rerun(capsys, command(tmp, dest, *OPTIONS, "--seed", "3"))
    assert "resuming" not in out and "already written" not in out and "shuffled (seed 3)" in out
    data = zarr.open_group(str(dest), mode="r")
    np.testing.assert_array_equal(data["x"][:], x[data["y"][:]])


@pytest.mark.slow
def test_another_command_after_a_kill_between_the_renames_never_deletes_the_only_copy(
    sources, reference, tmp_path, recwarn
):
    tmp, x, old = sources
    dest = tmp_path / "out.zarr"
    daskfeed.ingest([tmp / "old.npy"], dest)
    killed_after("old-moved", command(tmp, dest, *OPTIONS, "--seed", "3", "--overwrite"))
    # A different command that fails: the interrupted replacement is finished first, the new store kept.
    with pytest.raises(daskfeed.InputError, match="does not exist"):
        daskfeed.ingest([tmp / "missing.npy"], dest, overwrite=True)
    assert_new_store(dest, reference, x)
    assert not os.path.exists(f"{dest}.daskfeed-old")
    # ... and one that succeeds replaces it, leaving nothing beside it.
    daskfeed.ingest([tmp / "old.npy"], dest, overwrite=True, chunk_length=7)
    np.testing.assert_array_equal(zarr.open_array(str(dest / "old"), mode="r")[:], old)
    assert_no_leftovers(dest)


def test_an_old_store_left_aside_goes_back_when_dest_is_missing(sources, tmp_path):
    """As a kill between the renames of an earlier daskfeed left it: DEST gone, DEST.daskfeed-old complete."""
    tmp, _x, old = sources
    dest = tmp_path / "out.zarr"
    before = daskfeed.ingest([tmp / "old.npy"], dest)
    os.rename(dest, f"{dest}.daskfeed-old")
    back = pytest.warns(daskfeed.DaskfeedWarning, match="put the old store back at")
    with back, pytest.raises(daskfeed.InputError, match="already exists; pass overwrite=True"):
        daskfeed.ingest([tmp / "x.npy"], dest)  # another command, without --overwrite: DEST is there again
    assert_old_store(dest, old, before.commit)
    assert_no_leftovers(dest)


def test_a_work_folder_whose_store_is_gone_starts_afresh(sources, tmp_path, monkeypatch):
    """The journal says buckets were placed, but the store they went into is gone: never trust the journal."""
    tmp, x, _old = sources
    dest = tmp_path / "out.zarr"
    original = ingest_mod._Journal.mark

    def mark(journal, step):
        original(journal, step)
        if step == "bucket 2":
            raise KeyboardInterrupt

    monkeypatch.setattr(ingest_mod._Journal, "mark", mark)
    kwargs = dict(shuffle=True, seed=3, chunk_length=100, memory="40KB")
    with pytest.raises(KeyboardInterrupt):
        daskfeed.ingest([tmp / "x.npy", tmp / "y.npy"], dest, **kwargs)
    monkeypatch.undo()
    shutil.rmtree(os.path.join(partial_path(dest), "store.zarr"))
    report = daskfeed.ingest([tmp / "x.npy", tmp / "y.npy"], dest, **kwargs)
    assert report.chunks_resumed == 0 and any("started afresh" in n for n in report.notes)
    data = zarr.open_group(str(dest), mode="r")
    assert sorted(data["y"][:].tolist()) == list(range(2000))
    np.testing.assert_array_equal(data["x"][:], x[data["y"][:]])


@pytest.mark.slow
def test_an_ingest_into_its_own_source_killed_after_the_commit_is_not_done_twice(sources, tmp_path, capsys):
    """``ingest S S --shuffle --overwrite`` rewrites S in place; killed after the new S is in, the rerun must not
    shuffle the shuffled store again (its source changed, the command did not)."""
    tmp, _x, _old = sources
    first = tmp_path / "first.zarr"
    daskfeed.ingest([tmp / "x.npy", tmp / "y.npy"], first, chunk_length=100)
    shutil.copytree(first, tmp_path / "second.zarr")

    def argv(store):
        return [sys.executable, "-m", "daskfeed.cli", "ingest", store, store, *OPTIONS, "--seed", "5", "--overwrite"]

    assert main(argv(str(tmp_path / "second.zarr"))[3:]) == 0  # uninterrupted
    capsys.readouterr()
    killed_after("store-moved", argv(str(first)))
    out, _err = rerun(capsys, argv(str(first)))
    assert "was complete already" in out
    shuffled_once = store_files(tmp_path / "second.zarr")
    del shuffled_once["zarr.json"]  # the group's attributes name its source: itself
    assert {k: v for k, v in store_files(first).items() if k != "zarr.json"} == shuffled_once


# -- a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real small filesystem (tmpfs) at ``tmp_path / "disk"``, and a function that resizes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True, text=True)
        if shutil.which("mount")
        else None
    )
    if mounted is None or mounted.returncode != 0:
        why = mounted.stderr.strip() if mounted is not None else "no mount command"
        pytest.skip(f"a full disk needs a small filesystem, and mounting a tmpfs is not permitted here: {why}")

    def resize(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True)

    yield disk, resize
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """x (4000, 256) uint8, random (1 MB; zstd cannot shrink it), y = row index; and their uninterrupted stores."""
    tmp = tmp_path_factory.mktemp("big")
    np.save(tmp / "x.npy", np.random.default_rng(2).integers(0, 255, (4000, 256), dtype="u1"))
    np.save(tmp / "y.npy", np.arange(4000, dtype="i8"))
    for name, extra in [("in-order", []), ("shuffled", ["--shuffle", "--seed", "1"])]:
        assert main(["ingest", str(tmp / "x.npy"), str(tmp / "y.npy"), str(tmp / f"{name}.zarr"), *BIG, *extra]) == 0
    return tmp


#: Buckets of 500 samples (272 bytes each, twice, in --memory 300KB), chunks of 100 (26 KB).
BIG = ["--chunk-length", "100", "--memory", "300KB", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "size", "extra"),
    [
        ("scatter", "400k", ["--shuffle", "--seed", "1"]),  # the buckets (1.1 MB) do not fit
        ("place", "1150k", ["--shuffle", "--seed", "1"]),  # they fit; the store beside them does not
        ("in order", "400k", []),
    ],
    ids=["scatter", "place", "in-order"],
)
def test_a_full_disk_is_one_paragraph_and_the_rerun_finishes(big, small_disk, capsys, where, size, extra):
    disk, resize = small_disk
    resize(size)
    dest = disk / "out.zarr"
    argv = [sys.executable, "-m", "daskfeed.cli", "ingest", str(big / "x.npy"), str(big / "y.npy"), str(dest), *BIG]
    if where == "in order":  # from Python: an OSError of daskfeed's, with the errno
        with pytest.raises(DiskFullError) as full:
            daskfeed.ingest([big / "x.npy", big / "y.npy"], dest, chunk_length=100)
        assert isinstance(full.value, OSError) and full.value.errno == errno.ENOSPC
        assert full.value.folder == partial_path(dest) and full.value.needed >= 4000 * 264
    failed = subprocess.run([*argv, *extra], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "Traceback" not in failed.stderr and "Task was destroyed" not in failed.stderr, failed.stderr
    message = failed.stderr.strip()
    assert message.startswith("daskfeed ingest: error: the disk holding") and "\n" not in message
    assert repr(partial_path(dest)) in message and "run the same command again" in message
    assert "for the store" in message and ("for the shuffle's buckets" in message) == bool(extra)
    with open(os.path.join(partial_path(dest), "journal")) as f:  # that the disk filled where this case says
        assert ("scattered" in f.read()) == (where == "place")
    resize("8m")
    rerun(capsys, [*argv, *extra])
    reference = big / ("shuffled.zarr" if extra else "in-order.zarr")
    assert store_files(dest) == store_files(reference)
    assert_no_leftovers(dest)

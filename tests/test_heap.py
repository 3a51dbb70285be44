"""glibc's mmap threshold, which TensorFlow's from_generator pins at 128 KiB, set back by daskfeed's loaders."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_store

import daskfeed
from daskfeed import heap

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or heap._MALLOPT is None, reason="glibc's mallopt only"
)

JOB = """
import resource, sys, threading
import numpy as np
import daskfeed

def probe_faults():
    # page faults of a thread that makes, fills and frees a 1 MiB buffer 20 times: about 0 when freed
    # buffers are reused from the heap, 256 per buffer when each is a fresh mmap
    faults = []

    def run():
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(20):
            buffer = np.empty(2**20, np.uint8)
            buffer.fill(1)
            del buffer
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return faults[0]

before = probe_faults()
import tensorflow as tf, keras
ds = tf.data.Dataset.from_generator(lambda: iter(range(3)), output_signature=tf.TensorSpec((), tf.int32))
assert [int(v) for v in ds] == [0, 1, 2]  # the op of a from_generator sets mallopt(M_MMAP_THRESHOLD, 128 KiB)
pinned = probe_faults()
arrays = daskfeed.open_zarr(sys.argv[1])
if sys.argv[2] == "as_dataset":
    for _ in daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=256, seed=0, memory_budget="8MB"):
        pass
else:
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=256, seed=0, memory_budget="8MB")
    model.fit(seq, epochs=1, verbose=0)
    seq.close()
print(before, pinned, probe_faults())
"""
PAGES = 20 * 2**20 // 4096  # the probe's page faults when every buffer is a fresh mmap


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = np.random.default_rng(0).random((4000, 256), dtype="f4")  # 1 MiB chunks, as images come
    return write_store(
        tmp_path_factory.mktemp("heap") / "s.zarr", {"x": x, "y": np.arange(4000)}, {"x": 1000, "y": 1000}
    )


def faults_in_a_fresh_process(tmp_path, store, door, env=None):
    """The probe's faults before TensorFlow, after TensorFlow pinned the threshold, after an epoch through
    ``door``: in a process of its own, as the pin is for the whole process and only the first op makes it."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    # glibc's defaults: no variable of its own (a LocalCluster's nanny puts MALLOC_TRIM_THRESHOLD_ in this
    # process's environment, which turns glibc's dynamic threshold off in every child started after it)
    glibc = ("MALLOC_", "GLIBC_TUNABLES", heap.ENV)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(glibc)} | (env or {})
    done = subprocess.run(
        [sys.executable, str(script), store, door], capture_output=True, text=True, timeout=300, env=environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, pinned, after = (int(v) for v in done.stdout.split())
    assert before < PAGES // 4  # glibc's own dynamic threshold: the first buffers fault, later ones are reused
    if pinned < PAGES // 2:
        pytest.skip(f"this TensorFlow does not pin glibc's mmap threshold ({pinned} faults for {PAGES} pages)")
    return after


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize("door", ["as_dataset", "as_sequence"])
def test_a_loader_sets_back_the_threshold_tensorflow_pinned(tmp_path, store, door):
    """After TensorFlow's from_generator (as_dataset's own, or Keras's around a PyDataset), buffers are
    reused again once daskfeed has served an epoch: the 1 MiB probe no longer faults each page."""
    assert faults_in_a_fresh_process(tmp_path, store, door) < PAGES // 4


@pytest.mark.slow
@pytest.mark.tf
def test_zero_leaves_the_threshold_as_tensorflow_set_it(tmp_path, store):
    assert faults_in_a_fresh_process(tmp_path, store, "as_dataset", {heap.ENV: "0"}) >= PAGES // 2


@pytest.mark.parametrize("value", ["lots", "-1", str(64 * 2**20)])
def test_a_bad_threshold_is_named_where_the_loader_is_made(value, monkeypatch):
    monkeypatch.setenv(heap.ENV, value)
    with pytest.raises(daskfeed.InputError, match=rf"environment variable DASKFEED_MMAP_THRESHOLD .* got '{value}'"):
        daskfeed.Loader(np.zeros((10, 2)), batch_size=2)


@pytest.mark.parametrize(
    "env", [{"MALLOC_MMAP_THRESHOLD_": "1048576"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}]
)
def test_glibc_s_own_setting_is_left_alone(env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(heap.ENV, raising=False)
    try:
        daskfeed.Loader(np.zeros((10, 2)), batch_size=2)
        assert heap.threshold() == 0 and not heap.keep_buffers_in_heap()
    finally:
        for name in env:
            monkeypatch.delenv(name)
        assert heap.threshold() == heap.MMAP_THRESHOLD  # later loaders set it again


def test_a_trim_threshold_in_the_environment_is_left_as_set(monkeypatch):
    """dask's nanny puts MALLOC_TRIM_THRESHOLD_ in the environment: the mmap threshold is still set back, the
    trim threshold is not touched."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    try:
        daskfeed.Loader(np.zeros((10, 2)), batch_size=2)
        assert heap.threshold() == heap.MMAP_THRESHOLD and not heap._trim
    finally:
        monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
        heap.threshold()
    assert heap._trim

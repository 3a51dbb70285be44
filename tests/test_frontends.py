"""Both doors through real Keras fit / evaluate / predict: as_sequence (PyDataset) and as_dataset (tf.data)."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
from conftest import join_daskfeed_threads, sorted_blobs, write_store

import daskfeed

pytestmark = pytest.mark.tf

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    x, y = sorted_blobs(3000, spread=1.0, dim=8)
    path = write_store(tmp_path_factory.mktemp("fe") / "b.zarr", {"x": x, "y": y}, {"x": 250, "y": 700})
    return daskfeed.open_zarr(path)


def small_model(inputs=8):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_sequence_is_a_pydataset_with_keras_settings(blobs):
    with pytest.warns(daskfeed.DaskfeedWarning, match="workers=2 is not handed to Keras"):
        seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0, workers=2, max_queue_size=4)
    assert isinstance(seq, keras.utils.PyDataset)
    # Keras's worker pool trains batches of one epoch in the next: the Sequence keeps Keras at one worker.
    assert (seq.workers, seq.use_multiprocessing, seq.max_queue_size) == (1, False, 4)
    assert len(seq) == 47 and seq[46][0].shape == (3000 - 46 * 64, 8)
    with pytest.raises(IndexError):
        seq[47]
    seq.close()


@pytest.mark.slow
def test_fit_through_the_sequence_runs_epochs_in_order(blobs):
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0)
    history = small_model().fit(seq, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert seq.epoch == 2  # Keras's on_epoch_end before the first epoch does not skip epoch 0
    seq.close()
    assert join_daskfeed_threads() == []


@pytest.mark.slow
def test_fit_shuffle_true_is_correct_and_warns_once(blobs):
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="30KB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small_model().fit(seq, epochs=1, verbose=0)
    assert sum("out of order" in str(w.message) for w in caught) == 1
    seq.close()


@pytest.mark.slow
def test_fit_with_keras_default_shuffle_over_epochs_at_a_small_budget(blobs):
    """fit(seq, epochs=3) as most users write it (Keras's shuffle=True: batch indices in a new random order
    each epoch) with data that does not fit the budget: no crash, and each epoch serves every sample once."""
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="30KB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.OrderWarning)
        history = small_model().fit(seq, epochs=3, verbose=0)
        assert len(history.history["loss"]) == 3
        rng = np.random.default_rng(1)
        # The same protocol by hand, with sample ids: x[:, 0] is not an id here, so compare with the loader.
        for epoch in range(seq.epoch, seq.epoch + 3):
            seq.on_epoch_begin()
            asked = rng.permutation(len(seq))
            got = {int(i): seq[int(i)] for i in asked}
            seq.on_epoch_end()
            expected = [seq.loader.batch(i, epoch) for i in range(len(seq))]
            for i, (x, y) in enumerate(expected):
                np.testing.assert_array_equal(got[i][0], x)
                np.testing.assert_array_equal(got[i][1], y)
            assert sum(len(y) for _, y in expected) == 3000
    seq.close()


@pytest.mark.slow
def test_dropped_doors_free_their_loaders_and_threads(blobs):
    import gc

    def loaders_alive():
        gc.collect()
        return sum(isinstance(o, daskfeed.Loader) for o in gc.get_objects())

    before = loaders_alive()
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="30KB")
    seq.on_epoch_begin()
    for i in range(len(seq)):
        seq[i]
    seq.on_epoch_end()
    seq[0]  # the next epoch's windows are being read
    del seq
    assert loaders_alive() == before
    for batches in (3, None):  # part of an epoch, and all of it
        ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="30KB")
        iterator = iter(ds)
        for _ in range(batches or int(ds.cardinality())):
            next(iterator)
        assert loaders_alive() == before + 1
        del ds, iterator
        assert loaders_alive() == before
    assert join_daskfeed_threads() == []


@pytest.mark.slow
def test_a_dataset_derived_from_the_door_keeps_its_loader(blobs):
    """The generator TensorFlow keeps holds the loader weakly: a dataset made from as_dataset's keeps it."""
    import gc

    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0).map(lambda x, y: (x * 2, y))
    gc.collect()
    assert sum(len(b[1]) for b in ds) == 3000


def trained_weights(seq):
    model = small_model()
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    seq.close()
    return model.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("multiprocessing", [False, True])
def test_keras_workers_threads_and_processes(blobs, multiprocessing):
    """Asked for Keras's workers (threads or processes), the Sequence keeps Keras at one worker, says so, and
    trains on the very batches one worker gets: the same weights come out."""
    kwargs = dict(batch_size=64, seed=0, memory_budget="40KB")
    expected = trained_weights(daskfeed.as_sequence(blobs["x"], blobs["y"], **kwargs))
    with pytest.warns(daskfeed.DaskfeedWarning, match="not handed to Keras"):
        seq = daskfeed.as_sequence(blobs["x"], blobs["y"], workers=2, use_multiprocessing=multiprocessing, **kwargs)
    for got, want in zip(trained_weights(seq), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sequence_pickles(blobs):
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=3)
    copy = pickle.loads(pickle.dumps(seq))
    np.testing.assert_array_equal(copy[5][1], seq[5][1])
    copy.close()
    seq.close()


def test_dataset_spec_cardinality_and_epochs(blobs):
    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0)
    assert ds.element_spec == (tf.TensorSpec((None, 8), tf.float32), tf.TensorSpec((None,), tf.int64))
    assert int(ds.cardinality()) == 47
    first = np.concatenate([y.numpy() for _, y in ds])
    second = np.concatenate([y.numpy() for _, y in ds])
    assert len(first) == 3000 and np.array_equal(np.sort(first), np.sort(second))
    assert not np.array_equal(first, second)  # every new iteration is the next epoch
    dropped = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0, drop_remainder=True)
    assert dropped.element_spec[0].shape == (64, 8) and int(dropped.cardinality()) == 46


def test_each_pass_over_a_dataset_serves_the_epoch_its_loader_says(blobs):
    """as_dataset keeps no epoch counter of its own: a pass serves the loader's epoch when none of its batches
    was handed out, else the next; the loader's position follows the blocks handed to TensorFlow."""
    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0)
    loader = ds.loader

    def pass_of(dataset):
        return np.concatenate([y.numpy() for _, y in dataset])

    def epoch_of(e):
        return np.concatenate([loader.batch(i, e)[1] for i in range(len(loader))])

    np.testing.assert_array_equal(pass_of(ds), epoch_of(0))
    assert loader.position == (0, len(loader))  # every batch of epoch 0 handed out
    np.testing.assert_array_equal(pass_of(ds), epoch_of(1))
    loader.set_epoch(5)  # between passes, as a restart at an epoch boundary does
    np.testing.assert_array_equal(pass_of(ds), epoch_of(5))
    np.testing.assert_array_equal(pass_of(ds.take(3)), epoch_of(6)[: 3 * 64])  # a pass left early ...
    assert loader.position.epoch == 6 and loader.position.next_batch > 0  # (one block holds the whole epoch)
    np.testing.assert_array_equal(pass_of(ds), epoch_of(7))  # ... and the next pass is the next epoch
    loader.restore(loader.state(3, 0))
    np.testing.assert_array_equal(pass_of(ds), epoch_of(3))
    loader.close()


def test_both_doors_give_the_same_batches_bit_for_bit(blobs):
    kwargs = dict(batch_size=100, seed=21, memory_budget="40KB")
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], **kwargs)
    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], **kwargs)
    for epoch in range(2):
        batches = list(ds)
        assert len(batches) == len(seq)
        for i, (x, y) in enumerate(batches):
            sx, sy = seq[i]
            assert x.numpy().tobytes() == sx.tobytes() and np.array_equal(y.numpy(), sy)
        seq.on_epoch_begin()
        seq.on_epoch_end()
        assert seq.epoch == epoch + 1
    seq.close()


@pytest.mark.slow
def test_fit_evaluate_predict_through_the_dataset(blobs):
    model = small_model()
    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=64, seed=0)
    model.fit(ds, epochs=2, verbose=0)
    loss, accuracy = model.evaluate(ds, verbose=0)
    assert np.isfinite(loss) and accuracy > 0.5
    preds = model.predict(daskfeed.as_dataset(blobs["x"], batch_size=128, shuffle=False), verbose=0)
    assert preds.shape == (3000, 10)
    np.testing.assert_allclose(preds[:5], model.predict(blobs["x"][:5].compute(), verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_multi_input_dicts_and_sample_weights(tmp_path):
    n = 500
    rng = np.random.default_rng(0)
    image = rng.random((n, 4, 4, 1), dtype="f4")
    meta = rng.random((n, 3), dtype="f4")
    label = (image.mean(axis=(1, 2, 3)) > 0.5).astype("i8")
    weight = np.where(label == 1, 2.0, 1.0).astype("f4")
    path = write_store(
        tmp_path / "multi.zarr",
        {"image": image, "meta": meta, "label": label, "w": weight},
        {"image": 64, "meta": 100, "label": 500, "w": 50},
    )
    a = daskfeed.open_zarr(path)
    keras.utils.set_random_seed(0)
    i1, i2 = keras.Input((4, 4, 1), name="image"), keras.Input((3,), name="meta")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(i1), i2])
    out = keras.layers.Dense(2, activation="softmax", name="label")(h)
    model = keras.Model({"image": i1, "meta": i2}, {"label": out})
    model.compile("adam", {"label": "sparse_categorical_crossentropy"})
    x, y = {"image": a["image"], "meta": a["meta"]}, {"label": a["label"]}
    seq = daskfeed.as_sequence(x, y, a["w"], batch_size=32, seed=0)
    batch = seq[0]
    assert set(batch[0]) == {"image", "meta"} and set(batch[1]) == {"label"} and batch[2].shape == (32,)
    model.fit(seq, epochs=1, shuffle=False, verbose=0)
    ds = daskfeed.as_dataset(x, y, a["w"], batch_size=32, seed=0)
    assert set(ds.element_spec[0]) == {"image", "meta"}
    model.fit(ds, epochs=1, shuffle=False, verbose=0)
    seq.close()
    # The weights reach the loss: the same batches with every weight doubled give twice the loss.
    from daskfeed.tf import dataset_from_loader

    doubled = write_store(tmp_path / "w2.zarr", {"w": 2 * weight}, {"w": 50})
    losses = []
    for w in (a["w"], daskfeed.open_zarr(doubled)["w"]):
        with daskfeed.Loader(x, y, w, batch_size=32, seed=0) as loader:
            losses.append(model.evaluate(dataset_from_loader(loader), verbose=0))
    np.testing.assert_allclose(losses[1], 2 * losses[0], rtol=1e-4)


def test_front_end_bad_knobs(blobs):
    with pytest.raises(daskfeed.InputError, match="workers must be >= 0, got -1"):
        daskfeed.as_sequence(blobs["x"], workers=-1)
    with pytest.raises(daskfeed.InputError, match="use_multiprocessing must be True or False"):
        daskfeed.as_sequence(blobs["x"], use_multiprocessing="yes")
    for door in (daskfeed.as_sequence, daskfeed.as_dataset):  # the knobs are LoaderOptions's, checked there
        with pytest.raises(daskfeed.InputTypeError, match="unknown loader option 'batchsize'; the options are batch_"):
            door(blobs["x"], batchsize=16)
        with pytest.raises(daskfeed.InputError, match="batch_size must be"):
            door(blobs["x"], batch_size=0)
    options = daskfeed.LoaderOptions(batch_size=16, seed=3)
    assert len(daskfeed.as_sequence(blobs["x"], options=options, batch_size=32)) == len(
        daskfeed.Loader(blobs["x"], batch_size=32)
    )
    assert daskfeed.as_dataset(blobs["x"], options=options).loader.seed == 3


@pytest.mark.slow
def test_an_error_in_the_training_step_leaves_no_thread(blobs):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise RuntimeError("step failed")

    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=16, seed=0, memory_budget="20KB")
    with pytest.raises(RuntimeError, match="step failed"):
        small_model().fit(seq, epochs=1, shuffle=False, verbose=0, callbacks=[Boom()])
    assert join_daskfeed_threads() == []
    ds = daskfeed.as_dataset(blobs["x"], blobs["y"], batch_size=16, seed=0, memory_budget="20KB")
    with pytest.raises(RuntimeError, match="step failed"):
        small_model().fit(ds, epochs=1, verbose=0, callbacks=[Boom()])
    assert join_daskfeed_threads() == []


def explode_on_chunk_3(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 3:
        raise OSError("disk gone")
    return block


@pytest.mark.slow
@pytest.mark.parametrize("door", ["as_sequence", "as_dataset"])
def test_a_read_error_ends_fit_and_a_loop_and_the_loader_keeps_it(blobs, door):
    """Mid-epoch, in tf.data's thread: TensorFlow raises its own error holding daskfeed's text (the error
    itself when Keras read that batch in fit's own thread); either way the ChunkReadError, with its array,
    chunk and cause, is the loader's ``error``."""
    import tensorflow as tf

    from daskfeed.interrupts import Interrupts

    x = blobs["x"].map_blocks(explode_on_chunk_3, dtype="f4")
    presses = Interrupts.count()
    make = getattr(daskfeed, door)
    data = make(x, blobs["y"], batch_size=64, seed=0, memory_budget="40KB", reads_per_chunk=1, shuffle=False)
    assert data.loader.error is None
    raised = (daskfeed.ChunkReadError, tf.errors.OpError)  # the error itself where it was raised in fit's thread
    with pytest.raises(raised, match="reading array x chunk 3"):
        small_model().fit(data, epochs=1, shuffle=False, verbose=0)
    error = data.loader.error
    assert isinstance(error, daskfeed.ChunkReadError) and (error.array, error.chunk) == ("x", 3)
    assert isinstance(error.__cause__, OSError) and "disk gone" in str(error.__cause__)
    # TensorFlow's gradient tape was left as it was, so the next fit trains.
    good = make(blobs["x"], blobs["y"], batch_size=64, seed=0)
    assert np.isfinite(small_model().fit(good, epochs=1, shuffle=False, verbose=0).history["loss"][0])
    assert good.loader.error is None
    if door == "as_dataset":
        data = make(x, blobs["y"], batch_size=64, seed=0, memory_budget="40KB", reads_per_chunk=1, shuffle=False)
        with pytest.raises(tf.errors.OpError, match="reading array x chunk 3"):
            for _ in data:
                pass
        assert isinstance(data.loader.error, daskfeed.ChunkReadError)
    else:  # a batch asked in Python raises the error itself
        seq = make(x, blobs["y"], batch_size=64, seed=0, memory_budget="40KB", reads_per_chunk=1, shuffle=False)
        with pytest.raises(daskfeed.ChunkReadError, match="reading array x chunk 3"):
            for i in range(len(seq)):
                seq[i]
        assert seq.loader.error.chunk == 3
    assert Interrupts.count() == presses  # no signal was sent
    assert join_daskfeed_threads() == []


#: The end of a child job: 20 chunks of 100 samples, read through ``broken`` (which the job defines before it),
#: served by the door named on the command line to a one-layer model.
BROKEN_READ_AND_MODEL = """
x = da.from_array(np.random.rand(2000, 3).astype("f4"), chunks=(100, 3)).map_blocks(broken, dtype="f4")
y = da.from_array(np.zeros(2000, "f4"), chunks=100)
data = getattr(daskfeed, sys.argv[1])(x, y, batch_size=50, seed=0, memory_budget="20KB", reads_per_chunk=1)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
"""

IGNORING_JOB = (
    """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup python job.py &` or a batch system starts it
import numpy as np, keras, daskfeed, tensorflow as tf
import dask.array as da
from daskfeed.interrupts import Interrupts

def broken(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 3:
        raise OSError("disk gone")
    return block
"""
    + BROKEN_READ_AND_MODEL
    + """
assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a loader left it as it was
try:
    model.fit(data, epochs=1, shuffle=False, verbose=0)
except (tf.errors.OpError, daskfeed.ChunkReadError):
    print("caught", data.loader.error.array, data.loader.error.chunk, flush=True)
os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C press is still ignored
print("still here", Interrupts.count(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN, flush=True)
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("door", ["as_sequence", "as_dataset"])
def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it(tmp_path, door):
    """A process started with SIGINT ignored: a loader installs no handler, a read error ends fit and is the
    loader's error, and a real press is still ignored (the process goes on; no wait counts it as Ctrl-C)."""
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(IGNORING_JOB)
    done = subprocess.run([sys.executable, str(script), door], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["caught x 3", "still here 0 True"], done.stderr[-3000:]


@pytest.mark.slow
def test_keras_peek_then_epoch_is_in_order_even_with_tiny_windows(blobs):
    """Keras reads batches 0 and 1 for the spec, then the epoch; a window gone after the peek is no warning."""
    seq = daskfeed.as_sequence(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="25KB", reads_per_chunk=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_model().fit(seq, epochs=2, shuffle=False, verbose=0)
    seq.close()


@pytest.mark.slow
def test_a_dataset_from_a_loader_you_close(blobs):
    """The README's way to close an as_dataset loader: make the Loader, fit, leave the with block."""
    from daskfeed.tf import dataset_from_loader

    with daskfeed.Loader(blobs["x"], blobs["y"], batch_size=64, seed=0, memory_budget="40KB") as loader:
        small_model().fit(dataset_from_loader(loader), epochs=2, verbose=0)
        assert loader.epoch == 1  # the second iteration was epoch 1
    assert join_daskfeed_threads() == []
    assert loader.stats["batches"] == 2 * len(loader)


RESUME_JOB = """
import sys, time, numpy as np, keras, daskfeed
from daskfeed.keras import BackupAndRestore
store, backup, log, out = sys.argv[1:5]
arrays = daskfeed.open_zarr(store)
seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=50, seed=0, memory_budget="40KB")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(keras.optimizers.SGD(1e-4), "mse")
resume = BackupAndRestore(backup, seq, save_freq=4)

class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        with open(log, "a") as f:  # the place of the batch just trained on
            f.write(f"{resume._next - 1}\\n")
        time.sleep(0.05)

model.fit(seq, epochs=3, shuffle=False, verbose=0, callbacks=[resume, Record()])
np.save(out, np.concatenate([w.ravel() for w in model.get_weights()]))
"""


@pytest.mark.slow
def test_a_fit_killed_mid_epoch_and_restarted_serves_exactly_the_uninterrupted_batches(xy_store, tmp_path):
    """A real fit in a subprocess, SIGKILLed mid-epoch, started again: the batches trained on, and the final
    weights, are those of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "job.py"
    script.write_text(RESUME_JOB)

    def job(name):
        args = [
            xy_store,
            str(tmp_path / f"{name}-backup"),
            str(tmp_path / f"{name}.log"),
            str(tmp_path / f"{name}.npy"),
        ]
        return subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True)

    def places(name):
        return [int(line) for line in (tmp_path / f"{name}.log").read_text().split()]

    whole = job("whole")
    assert whole.wait(300) == 0, whole.stderr.read()
    n = 3 * 21  # 3 epochs of 1,003 samples in batches of 50
    assert places("whole") == list(range(n))
    killed = job("resumed")
    log = tmp_path / "resumed.log"
    while killed.poll() is None and not (log.exists() and len(log.read_text().split()) >= 30):
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    state = json.loads((tmp_path / "resumed-backup" / "daskfeed_state.json").read_text())
    saved = state["epoch"] * 21 + state["next_batch"]
    before = places("resumed")
    assert 21 <= saved <= len(before) < n and saved % 4 == 0  # killed in epoch 1, after a save
    restarted = job("resumed")
    assert restarted.wait(300) == 0, restarted.stderr.read()
    after = places("resumed")[len(before) :]
    assert before[:saved] + after == list(range(n))  # from the saved place on: no batch twice, none skipped
    np.testing.assert_allclose(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "whole.npy"), rtol=1e-6)


FORKS = """
import multiprocessing, sys, daskfeed
arrays = daskfeed.open_zarr(sys.argv[1])

def child(i):  # in a process forked while the parent's threads were reading
    return loader.batch(i)[1].tolist()

for run in range(20):
    loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50, seed=run, memory_budget="40KB")
    batches = iter(loader)
    next(batches)  # the parent's prefetch and read threads are at work
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(child, range(len(loader)))
    assert got == [loader.batch(i)[1].tolist() for i in range(len(loader))], run
    batches.close()
    loader.close()
print("done")
"""


@pytest.mark.slow
def test_twenty_forks_while_threads_read_never_hang(xy_store, tmp_path):
    """A process forked while daskfeed's threads run (a user's multiprocessing pool; Keras's used to) makes
    threads of its own instead of inheriting dask's pools and their lock, held by a thread that is not there
    (before, 1 run in 4 hung), and computes the very batches the parent does."""
    import subprocess
    import sys

    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    done = subprocess.run([sys.executable, str(script), xy_store], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


CTRL_C_JOB = (
    """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as started from a terminal, even if pytest was not
import numpy as np, keras, daskfeed
import dask.array as da

def broken(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 5:
        print("stuck", flush=True)
        time.sleep(600)  # a read that never comes back while the test runs
    return block
"""
    + BROKEN_READ_AND_MODEL
    + """
print("fitting", flush=True)
model.fit(data, epochs=2, shuffle=False, verbose=0)
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("door", ["as_sequence", "as_dataset"])
def test_ctrl_c_reaches_fit_while_a_chunk_read_is_stuck(tmp_path, door):
    """TensorFlow holds the main thread in the op that waits for the stuck batch; Ctrl-C still ends fit, long
    before the read would have returned, with TensorFlow's error saying Ctrl-C (not pybind11's MISMATCH
    error, and with no KeyboardInterrupt raised inside TensorFlow's C++)."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "job.py"
    script.write_text(CTRL_C_JOB)
    job = subprocess.Popen(
        [sys.executable, str(script), door], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert job.stdout.readline().strip() == "fitting"
    assert job.stdout.readline().strip() == "stuck"  # the read of chunk 5 has begun and will not return
    time.sleep(1)  # let fit come to wait for that window (not a timing assertion: earlier is fine too)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)  # the read sleeps 600 s: ending before that is the point
    assert job.returncode == 1, err[-3000:]
    assert "MISMATCH" not in err and "Exception ignored" not in err, err[-3000:]
    last = err[err.rindex("Traceback (most recent call last)") :]
    assert "UnknownError" in err and "KeyboardInterrupt: Ctrl-C while a batch was being read" in last

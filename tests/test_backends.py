"""as_sequence through real ``model.fit`` on each Keras 3 backend (JAX, PyTorch, TensorFlow), each in a subprocess.

Which samples did each training step see? A layer at the model's input (``Record``) keeps ``x[:, 0]``, the sample
id the store carries, every time the model runs in training mode, and a callback tells it the Keras epoch. The
model is compiled with ``run_eagerly=True`` so that the layer sees concrete arrays on every backend; that only
keeps Keras from compiling the step: the batches reach it through Keras's own data path (its PyDataset adapter,
its iterators, tf.data on TensorFlow), as in any fit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_store

N, BATCH = 300, 32  # 10 batches per epoch, the last of 12 samples
N_BATCHES = -(-N // BATCH)
#: Six windows an epoch (the data does not fit the budget), so epochs are not served from one resident copy.
KNOBS = dict(batch_size=BATCH, seed=0, memory_budget="4KB", reads_per_chunk=2)
#: The resumable fit saves every 3 batches and is stopped after this many: in Keras epoch 1, 2 batches after a save.
CRASH_AT = N_BATCHES + 7

FIT_JOB = """
import json, os, sys, warnings
if os.environ["KERAS_BACKEND"] != "tensorflow":
    sys.modules["tensorflow"] = None  # JAX and PyTorch users need no TensorFlow: importing it would fail here
import numpy as np, keras, daskfeed
from daskfeed.keras import BackupAndRestore

store, out, work, config = sys.argv[1:5]
config = json.loads(config)
arrays = daskfeed.open_zarr(store)
KNOBS = config["knobs"]
seen = {}


class Record(keras.layers.Layer):
    epoch = None

    def call(self, x, training=None):
        if training and Record.epoch is not None:
            seen.setdefault(Record.epoch, []).append(keras.ops.convert_to_numpy(x[:, 0]).astype(int).tolist())
        return x


class Epochs(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        Record.epoch = epoch


def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((2,)), Record(), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(1e-4), "mse", run_eagerly=True)
    return m


def fit(seq, callbacks=(), **kwargs):
    seen.clear()
    Record.epoch = None
    m = model()
    history = m.fit(seq, verbose=0, callbacks=[*callbacks, Epochs()], **kwargs)
    return m, len(history.history["loss"]), [seen.get(k, []) for k in range(max(seen, default=-1) + 1)]


results = {}
for name, workers, processes in [("workers=1", 1, False), ("workers=2", 2, False), ("multiprocessing", 2, True)]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], workers=workers, use_multiprocessing=processes, **KNOBS)
    told = [str(w.message) for w in caught if "not handed to Keras" in str(w.message)]
    _, ran, steps = fit(seq, epochs=3, shuffle=False)
    results[name] = {"ran": ran, "steps": steps, "epoch_after": seq.epoch, "warned": told}
    seq.close()

if config["more"]:
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **KNOBS)
    _, ran, steps = fit(seq, epochs=2)  # Keras's default shuffle=True: batch indices in a new order each epoch
    results["shuffle"] = {"ran": ran, "steps": steps}
    seq.close()

    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **KNOBS)
    _, ran, steps = fit(seq, epochs=5, steps_per_epoch=4, shuffle=False)
    results["steps_per_epoch"] = {"ran": ran, "steps": steps}
    seq.close()

    def resumable(run, stop_at=None):
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **KNOBS)
        resume = BackupAndRestore(os.path.join(work, run), seq, save_freq=3)
        trained = []

        class Crash(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                trained.append(batch)
                if len(trained) == stop_at:
                    raise RuntimeError("preempted")

        try:
            m, ran, steps = fit(seq, epochs=3, shuffle=False, callbacks=[resume, Crash()])
        except RuntimeError:
            m, ran, steps = None, None, [seen.get(k, []) for k in range(max(seen) + 1)]
        state = os.path.join(work, run, BackupAndRestore.STATE_FILE)
        saved = json.load(open(state)) if os.path.exists(state) else None
        weights = None if m is None else np.concatenate([w.ravel() for w in m.get_weights()]).tolist()
        seq.close()
        return {"ran": ran, "steps": steps, "saved": saved, "weights": weights}

    results["backup"] = {
        "whole": resumable("whole"),
        "killed": resumable("resumed", stop_at=config["crash_at"]),
        "resumed": resumable("resumed"),
    }

    # A loop by hand that never calls on_epoch_begin/end: asking for a batch after every batch of the epoch
    # was served starts the next epoch.
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **KNOBS)
    hand = [[seq[i][0][:, 0].astype(int).tolist() for i in range(len(seq))] for _ in range(2)]
    results["hand"] = {"batches": hand, "epoch_after": seq.epoch}
    try:
        seq.workers = 2
    except daskfeed.InputError as err:
        results["hand"]["set_workers"] = str(err)
    seq.close()

if os.environ["KERAS_BACKEND"] != "tensorflow":
    try:
        daskfeed.as_dataset
    except ModuleNotFoundError as err:
        results["as_dataset"] = {"name": err.name, "message": str(err)}
json.dump(results, open(out, "w"))
"""

BACKENDS = [
    pytest.param(
        "jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
    ),
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torch") is None,
            reason="PyTorch is not installed (not in the test extra: PyPI's default torch is a CUDA build of GBs; "
            "pip install torch==2.13.0 takes the CPU build where it lies on disk)",
        ),
    ),
    pytest.param(
        "tensorflow",
        marks=pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed"),
    ),
]
CONFIGS = ["workers=1", "workers=2", "multiprocessing"]

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed"),
    pytest.mark.slow,  # every test waits for the Keras fits in subprocesses (fit_on): 10-16 s per backend
    pytest.mark.tf,
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """N samples whose x[:, 0] is the sample id; x and y chunked unlike each other, ragged."""
    x = np.zeros((N, 2), "f4")
    x[:, 0] = np.arange(N)
    x[:, 1] = np.random.default_rng(0).random(N)
    y = (np.arange(N) % 3).astype("f4")
    return write_store(tmp_path_factory.mktemp("ids") / "ids.zarr", {"x": x, "y": y}, {"x": 45, "y": 70})


@pytest.fixture(scope="module")
def loader_epochs(store):
    """The ids of each batch of epochs 0..2 from a plain daskfeed.Loader (no Keras) with the same seed and knobs:
    what every backend must train on."""
    import daskfeed

    arrays = daskfeed.open_zarr(store)
    with daskfeed.Loader(arrays["x"], arrays["y"], **KNOBS) as loader:
        assert len(loader) == N_BATCHES
        return [[loader.batch(i, k)[0][:, 0].astype(int).tolist() for i in range(N_BATCHES)] for k in range(3)]


@pytest.fixture(scope="module")
def fit_on(store, tmp_path_factory):
    """``fit_on(backend)``: what FIT_JOB recorded in a subprocess whose Keras runs on ``backend``, run once per
    backend (the longer cases only on JAX, the backend that used to fail them)."""
    runs: dict[str, dict] = {}

    def run(backend: str) -> dict:
        if backend not in runs:
            work = tmp_path_factory.mktemp(backend)
            script, out = work / "fit.py", work / "out.json"
            script.write_text(FIT_JOB)
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
            config = {"knobs": KNOBS, "more": backend == "jax", "crash_at": CRASH_AT}
            args = [sys.executable, str(script), store, str(out), str(work), json.dumps(config)]
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=280)
            assert done.returncode == 0, done.stderr[-4000:]
            runs[backend] = json.loads(out.read_text())
        return runs[backend]

    return run


def assert_each_sample_once(steps: list) -> None:
    ids = np.concatenate([np.asarray(s) for s in steps])
    counts = np.bincount(ids, minlength=N)
    twice, never = int((counts > 1).sum()), int((counts == 0).sum())
    assert (twice, never) == (0, 0), f"{twice} samples trained on twice and {never} never in one Keras epoch"


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_keras_epoch_is_that_epoch_of_the_loader_every_sample_once(fit_on, loader_epochs, backend, config):
    """Keras epoch k trains on batches 0..len-1 of the loader's epoch k, in order, on every backend, with
    workers=2 or use_multiprocessing=True too. Before: on JAX and PyTorch epoch k trained on daskfeed's epoch
    k+1 (the batch Keras reads to build the model counted as an epoch), and with a worker pool on parts of two
    epochs (the pool trains the batches it computed ahead at the end of one epoch in the next)."""
    got = fit_on(backend)[config]
    assert got["ran"] == 3 and len(got["steps"]) == 3
    for k in range(3):
        assert_each_sample_once(got["steps"][k])
        assert got["steps"][k] == loader_epochs[k], f"Keras epoch {k} is not the loader's epoch {k}"
    assert got["epoch_after"] == 3
    assert len(got["warned"]) == (config != "workers=1")  # Keras gets workers=1, and a user who asked is told


on_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")


@on_jax
def test_keras_default_shuffle_still_serves_each_sample_once(fit_on, loader_epochs):
    got = fit_on("jax")["shuffle"]
    assert got["ran"] == 2
    for k in range(2):
        assert_each_sample_once(got["steps"][k])
        assert sorted(got["steps"][k]) == sorted(loader_epochs[k])  # the loader's batches, in Keras's order


@on_jax
def test_steps_per_epoch_shorter_than_the_sequence_goes_on_through_the_epoch(fit_on, loader_epochs):
    """fit(steps_per_epoch=4, epochs=5) on 10 batches: Keras's epochs go on through the loader's epoch (Keras
    ends its third epoch after 2 batches, where the data ends), then through the next; the stream of batches is
    the loader's, none twice."""
    got = fit_on("jax")["steps_per_epoch"]
    assert [len(steps) for steps in got["steps"]] == [4, 4, 2, 4, 4]
    stream = [batch for steps in got["steps"] for batch in steps]
    assert stream == loader_epochs[0] + loader_epochs[1][:8]


@on_jax
def test_backup_and_restore_runs_the_epochs_asked_and_resumes_exactly(fit_on, loader_epochs):
    """daskfeed.keras.BackupAndRestore with fit(epochs=3) on JAX runs 3 epochs (before: 2); a fit stopped mid-epoch
    and run again trains on exactly the uninterrupted run's batches, and ends with its weights."""
    backup = fit_on("jax")["backup"]
    whole, killed, resumed = backup["whole"], backup["killed"], backup["resumed"]
    assert whole["ran"] == 3 and whole["steps"] == loader_epochs
    before = [batch for steps in killed["steps"] for batch in steps]
    after = [batch for steps in resumed["steps"] for batch in steps]
    assert len(before) == CRASH_AT
    saved = killed["saved"]["epoch"] * N_BATCHES + killed["saved"]["next_batch"]
    assert saved == CRASH_AT - 2  # the last save before the crash (every 3 batches): two batches are trained again
    assert before[:saved] + after == [batch for steps in loader_epochs for batch in steps]
    np.testing.assert_allclose(resumed["weights"], whole["weights"], rtol=1e-6)


@on_jax
def test_a_loop_by_hand_moves_to_the_next_epoch_after_a_whole_one(fit_on, loader_epochs):
    got = fit_on("jax")["hand"]
    assert got["batches"] == loader_epochs[:2] and got["epoch_after"] == 1
    assert got["set_workers"] == "a daskfeed Sequence serves batches with Keras's workers=1, got workers=2"


@on_jax
def test_as_dataset_without_tensorflow_says_what_to_install(fit_on):
    """The JAX fits above ran with TensorFlow made impossible to import; there as_dataset says it needs
    TensorFlow, naming the extra, and points at as_sequence."""
    got = fit_on("jax")["as_dataset"]
    assert got["name"] == "tensorflow"
    assert got["message"].startswith("daskfeed.as_dataset needs TensorFlow, which is not installed")
    assert "pip install daskfeed[tf]" in got["message"] and "pip install daskfeed[keras]" in got["message"]
    assert "as_sequence" in got["message"]


KERAS_ON_MISSING_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
import daskfeed
daskfeed.as_sequence
"""


def test_keras_left_on_its_tensorflow_backend_without_tensorflow_says_how_to_pick_another(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(KERAS_ON_MISSING_TENSORFLOW)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: daskfeed.as_sequence imports Keras, whose backend is TensorFlow")
    assert "KERAS_BACKEND=jax" in last and "pip install daskfeed[tf]" in last

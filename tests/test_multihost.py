"""Several real processes on 127.0.0.1 train as one job: every sample exactly once per epoch, shards disjoint.

Each test starts its own processes (TensorFlow's MultiWorkerMirroredStrategy, JAX's distributed runtime), each
writes what it was served to ``tmp_path``, and the test compares: the union is the epoch, each sample once.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_store

needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

#: Generous: a child that has not finished by then is hung (a worker waiting for a peer that died).
CHILD_TIMEOUT = 240

N = 1003  # 11 read units of 100 (the last one of 3): shards of 2 hold 6 and 5 units, 600 and 403 samples


@pytest.fixture
def id_store(tmp_path):
    """x[i] = (i, -i) chunked by 100, y[i] = i chunked by 250: each sample carries its id in both arrays."""
    ids = np.arange(N)
    x = np.stack([ids, -ids], axis=1).astype("f4")
    return write_store(tmp_path / "ids.zarr", {"x": x, "y": ids.astype("i8")}, {"x": 100, "y": 250})


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_children(script: str, argvs: list[list[str]], tmp_path, **env: str) -> list[str]:
    """Run ``script`` once per argv, all at once; return each one's stderr, or fail with it (and kill the rest)."""
    path = tmp_path / "child.py"
    path.write_text(script)
    child_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "1", **env}
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), *argv],
            env=child_env,
            cwd=str(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    errs = [""] * len(procs)
    try:
        for i, proc in enumerate(procs):
            try:
                _, errs[i] = proc.communicate(timeout=CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, errs[i] = proc.communicate()
                errs[i] += f"\n[killed after {CHILD_TIMEOUT} s]"
            if proc.returncode != 0:
                break
    finally:
        for proc in procs:  # a peer of a failed child would wait for it until its own timeout
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "\n\n".join(f"child {i} exited {rc}:\n{errs[i][-4000:]}" for i, rc in failed)
    return errs


def tf_warnings(stderr: str) -> list[str]:
    """TensorFlow's C++ warnings (``W0000 ... file.cc:line] text``) about tf.data and auto-sharding."""
    return [line.split("] ", 1)[-1] for line in stderr.splitlines() if line.startswith("W") and ".cc:" in line]


def test_shard_takes_a_tf_distribute_input_context_and_needs_one_seed_for_all_shards():
    """``shard=ctx`` reads the context's pipeline id and count (duck-typed: no TensorFlow needed); shards of one
    job that each drew their own seed would overlap, so a drawn seed is refused for a shard of several."""
    from types import SimpleNamespace

    import daskfeed

    ctx = SimpleNamespace(input_pipeline_id=1, num_input_pipelines=3)  # what TensorFlow's InputContext has
    shard = daskfeed.Shard.parse(ctx)
    assert shard == daskfeed.Shard(1, 3) and shard.as_tuple() == (1, 3)
    assert repr(shard) == "Shard(index=1, count=3, origin='tf.distribute')"
    import dask.array as da

    x = np.arange(40).reshape(20, 2)
    lazy = da.from_array(x, chunks=(4, 2))  # 5 read units
    with pytest.raises(daskfeed.InputError, match=r"from the tf.distribute.InputContext\) .* pass the same seed"):
        daskfeed.Loader(lazy, batch_size=4, shard=ctx)
    with pytest.raises(daskfeed.InputError, match=r"shard=\(0, 2\) splits the read units .* pass the same seed"):
        daskfeed.Loader(lazy, batch_size=4, shard=(0, 2))
    parts = []
    for knobs in (dict(seed=9), dict(shuffle=False)):  # one seed for all, or no shuffle: shards partition
        for index in range(2):
            with daskfeed.Loader(lazy, batch_size=4, shard=(index, 2), **knobs) as loader:
                parts.append(np.concatenate([b[:, 0] for b in loader]))
    for a, b in (parts[:2], parts[2:]):
        assert not np.intersect1d(a, b).size and np.array_equal(np.sort(np.concatenate([a, b])), x[:, 0])


MWMS_WORKER = r"""
import json, os, sys
store, index, ports, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
)
import numpy as np
import tensorflow as tf
import daskfeed

strategy = tf.distribute.MultiWorkerMirroredStrategy()
assert strategy.num_replicas_in_sync == 2
arrays = daskfeed.open_zarr(store)
GLOBAL_BATCH = 64


@tf.function
def step(batch):
    x, y = batch
    return strategy.run(lambda x, y: (tf.cast(x[:, 0], tf.int64), y), args=(x, y))


def epoch_ids(dist):
    seen = []
    for batch in dist:
        for x, y in zip(*(strategy.experimental_local_results(t) for t in step(batch))):
            assert (x.numpy() == y.numpy()).all(), "a sample came with another sample's label"
            seen.append(y.numpy())
    return np.concatenate(seen)


def from_function(ctx):
    batch = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
    return daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=batch, seed=5, shard=ctx)


served = {"from_function": epoch_ids(strategy.distribute_datasets_from_function(from_function))}
sharded = daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=GLOBAL_BATCH, seed=5, shard=(index, 2))
served["distribute_dataset"] = epoch_ids(strategy.experimental_distribute_dataset(sharded))
whole = daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=GLOBAL_BATCH, seed=5)
served["unsharded"] = epoch_ids(strategy.experimental_distribute_dataset(whole))
np.savez(out, **served)
"""


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.cluster
@needs_tf
@pytest.mark.timeout(CHILD_TIMEOUT + 60)
def test_multi_worker_mirrored_strategy_trains_on_every_sample_once(id_store, tmp_path):
    """Two MWMS workers on 127.0.0.1 run a custom ``strategy.run`` loop over one epoch, three ways: a dataset
    per input pipeline with ``shard=ctx``, a sharded dataset through ``experimental_distribute_dataset`` (not
    sharded again by TensorFlow), and an unsharded one (TensorFlow keeps each worker's part of every batch)."""
    ports = ",".join(map(str, free_ports(2)))
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    errs = run_children(MWMS_WORKER, [[id_store, str(i), ports, str(outs[i])] for i in range(2)], tmp_path)
    served = [np.load(out) for out in outs]
    for recipe in ("from_function", "distribute_dataset", "unsharded"):
        ids = [s[recipe] for s in served]
        union = np.concatenate(ids)
        assert np.array_equal(np.sort(union), np.arange(N)), f"{recipe}: the workers did not see every sample once"
        assert all(len(part) for part in ids), f"{recipe}: a worker trained on nothing"
    # daskfeed's shards are what the workers trained on: the same split either way.
    for s in served:
        assert np.array_equal(np.sort(s["from_function"]), np.sort(s["distribute_dataset"]))
    # With the policies set, tf.data says nothing about auto-sharding.
    for err in errs:
        assert not [w for w in tf_warnings(err) if "auto_shard" in w or "AUTO sharding" in w], err[-3000:]


MIRRORED = r"""
import sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import daskfeed

store, out = sys.argv[1:]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
arrays = daskfeed.open_zarr(store)


@tf.function
def step(batch):
    return strategy.run(lambda b: b[1], args=(batch,))


def epoch_ids(dist):
    return np.concatenate([t.numpy() for b in dist for t in strategy.experimental_local_results(step(b))])


ds = daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=64, seed=1)
served = {"distribute_dataset": epoch_ids(strategy.experimental_distribute_dataset(ds))}
served["second_epoch"] = epoch_ids(strategy.experimental_distribute_dataset(ds))
served["from_function"] = epoch_ids(
    strategy.distribute_datasets_from_function(
        lambda ctx: daskfeed.as_dataset(
            arrays["x"], arrays["y"], batch_size=ctx.get_per_replica_batch_size(64), seed=1, shard=ctx
        )
    )
)
np.savez(out, **served)
"""


@pytest.mark.slow
@pytest.mark.tf
@needs_tf
@pytest.mark.timeout(CHILD_TIMEOUT + 60)
def test_mirrored_strategy_on_one_host_serves_every_sample_once_without_auto_shard_warnings(id_store, tmp_path):
    out = tmp_path / "mirrored.npz"
    (err,) = run_children(MIRRORED, [[id_store, str(out)]], tmp_path)
    served = np.load(out)
    for recipe in ("distribute_dataset", "second_epoch", "from_function"):
        assert np.array_equal(np.sort(served[recipe]), np.arange(N)), recipe
    assert not np.array_equal(served["distribute_dataset"], served["second_epoch"])  # each epoch its own order
    warnings = tf_warnings(err)
    # TensorFlow's AUTO policy warned "The `assert_cardinality` transformation is currently not handled by the
    # auto-shard rewrite and will be removed" (auto_shard.cc); the DATA policy daskfeed sets does not.
    assert not [w for w in warnings if "assert_cardinality" in w or "auto_shard" in w.lower()], warnings


JAX_PROCESS = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
store, index, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
import numpy as np
import daskfeed

assert "jax" not in sys.modules, "import daskfeed imported jax"
import jax

arrays = daskfeed.open_zarr(store)
# Before JAX's distributed system is up, a loader serves the whole epoch and leaves JAX's backend alone: had it
# asked jax.process_count(), the backend would have started and jax.distributed.initialize() would refuse.
before = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50).options.shard.as_tuple()
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=index, initialization_timeout=120
)
with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50, seed=3) as loader:
    shard = loader.options.shard
    ids = np.concatenate([y for x, y in loader])
try:
    daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50)
    refused = ""
except daskfeed.InputError as err:
    refused = str(err)
whole = len(daskfeed.Loader(arrays["x"], arrays["y"], batch_size=50, shard=(0, 1)))
result = dict(ids=ids, shard=[*shard.as_tuple()], origin=shard.origin, refused=refused, whole=whole, before=before)

# Keras 3 data parallel across the two processes: fit over as_sequence, each process feeding its own shard as
# its part of the global batch. Keras refuses a PyDataset unless told the data is sharded already.
import keras

keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
keras.utils.set_random_seed(0)
seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=25, seed=4)  # global batch 50


class Recording(keras.utils.PyDataset):
    # The ids of each batch fit asked for, by index (JAX reads batch 0 once more to build the model).
    def __init__(self, inner):
        super().__init__()
        self.inner, self.ids = inner, {}

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        x, y = self.inner[i]
        self.ids[i] = y.copy()
        return x / 1000, y.astype("f4")[:, None] / 1000

    def on_epoch_begin(self):
        self.inner.on_epoch_begin()

    def on_epoch_end(self):
        self.inner.on_epoch_end()


data = Recording(seq)
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
model.fit(data, epochs=1, shuffle=False, verbose=0)
result.update(
    fit_ids=np.concatenate([data.ids[i] for i in range(len(data))]),
    steps=len(data),
    kernel=np.asarray(model.layers[0].kernel.value.addressable_data(0)),
)
np.savez(out, **result)
"""


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.cluster
@needs_jax
@pytest.mark.timeout(CHILD_TIMEOUT + 60)
def test_jax_processes_each_get_their_own_shard_by_default(tmp_path):
    """Two JAX processes (``jax.distributed`` on CPU, one device each). A Loader made with no shard serves this
    process's share once JAX's distributed system is up (and does not start JAX's backend before);
    ``keras.distribution.DataParallel`` fits over ``as_sequence``, each process feeding its shard as its part of
    the global batch, and the two replicas stay equal."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    n = 1000  # 8 read units of 125: both shards hold 500 samples, so both processes run the same steps
    ids = np.arange(n)
    x = np.stack([ids, -ids], axis=1).astype("f4")
    store = write_store(tmp_path / "even.zarr", {"x": x, "y": ids.astype("i8")}, {"x": 125, "y": 250})
    (port,) = free_ports(1)
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    run_children(JAX_PROCESS, [[store, str(i), str(port), str(outs[i])] for i in range(2)], tmp_path)
    got = [np.load(out) for out in outs]
    for i, g in enumerate(got):
        assert g["before"].tolist() == [0, 1]
        assert g["shard"].tolist() == [i, 2] and str(g["origin"]) == "jax"
        # seed=None would draw a different seed in each process, and the shards would overlap: refused.
        assert "this is JAX process" in str(g["refused"]) and "pass the same seed" in str(g["refused"])
        assert int(g["whole"]) == n // 50  # shard=(0, 1) asks for the whole epoch
        assert int(g["steps"]) == n // 2 // 25
    for key in ("ids", "fit_ids"):
        served = [g[key] for g in got]
        assert not np.intersect1d(served[0], served[1]).size, key
        assert np.array_equal(np.sort(np.concatenate(served)), ids), key
    # One model trained on the global batch: the replicas' weights agree after the epoch.
    np.testing.assert_allclose(got[0]["kernel"], got[1]["kernel"], rtol=1e-6)

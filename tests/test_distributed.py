"""The same loader on a real distributed.LocalCluster gives the same batches as the local threads."""

from __future__ import annotations

import numpy as np
import pytest

import daskfeed

pytestmark = pytest.mark.slow  # worker processes start and stop: 2-32 s a test

distributed = pytest.importorskip("distributed")


@pytest.mark.cluster
def test_local_cluster_gives_the_same_batches(xy_store):
    arrays = daskfeed.open_zarr(xy_store)
    kwargs = dict(batch_size=64, seed=7, memory_budget="60KB", reads_per_chunk=2)
    with daskfeed.Loader(arrays["x"], arrays["y"], scheduler="threads", **kwargs) as local:
        expected = [local.batch(i) for i in range(len(local))]
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        with daskfeed.Loader(arrays["x"], arrays["y"], scheduler=client, **kwargs) as remote:
            got = [remote.batch(i) for i in range(len(remote))]
            assert remote.stats["windows_computed"] >= 2
        # A default client (scheduler=None) is found as well.
        with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as default:
            np.testing.assert_array_equal(default.batch(3)[1], expected[3][1])
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


def test_processes_scheduler_gathers_into_the_window(xy_store):
    """dask's process pool shares no memory with the loader: blocks come back and are copied in."""
    arrays = daskfeed.open_zarr(xy_store)
    kwargs = dict(batch_size=100, seed=3, memory_budget="60KB", reads_per_chunk=2)
    with daskfeed.Loader(arrays["x"], arrays["y"], scheduler="synchronous", **kwargs) as local:
        expected = [local.batch(i)[1] for i in range(len(local))]
    with daskfeed.Loader(arrays["x"], arrays["y"], scheduler="processes", **kwargs) as remote:
        got = [remote.batch(i)[1] for i in range(len(remote))]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


SHARED_CLUSTER_CLIENT = """
import sys, numpy as np, daskfeed
from distributed import Client
address, store, index, out = sys.argv[1:]
with Client(address) as client:
    arrays = daskfeed.open_zarr(store)
    kwargs = dict(batch_size=50, seed=0, memory_budget="40KB", shard=(int(index), 2), scheduler=client)
    with daskfeed.Loader(arrays["x"], arrays["y"], **kwargs) as loader:
        served = []
        for _ in range(2):
            for x, y in loader:
                assert (x[:, 0] == y).all(), "an image came with another sample's label"
                served.append(y)
np.save(out, np.concatenate(served))
"""


@pytest.mark.cluster
def test_two_processes_sharing_a_cluster_each_get_their_own_samples(tmp_path):
    """Two training processes (shards of different stores) on one scheduler: task keys never collide."""
    import subprocess
    import sys

    from conftest import write_store

    n = 4000
    stores = []
    for k, offset in enumerate((0, 100_000)):
        ids = np.arange(offset, offset + n)
        x = np.repeat(ids[:, None], 4, axis=1).astype("i8")
        stores.append(write_store(tmp_path / f"s{k}.zarr", {"x": x, "y": ids}, {"x": 250, "y": 250}))
    (tmp_path / "client.py").write_text(SHARED_CLUSTER_CLIENT)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(tmp_path / "client.py"),
                    cluster.scheduler_address,
                    store,
                    str(k),
                    str(tmp_path / f"{k}.npy"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k, store in enumerate(stores)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
    for k, offset in enumerate((0, 100_000)):
        served = np.load(tmp_path / f"{k}.npy")
        assert ((served >= offset) & (served < offset + n)).all()  # only its own store's samples
        first, second = np.split(served, 2)
        assert len(np.unique(first)) == len(first) and np.array_equal(np.sort(first), np.sort(second))


def kill_the_worker_on_chunk_7(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 7:
        import os

        os._exit(1)  # the worker process dies, every time this chunk is computed
    return block


@pytest.mark.cluster
def test_a_chunk_that_kills_its_worker_every_time_fails_with_the_cause():
    import dask
    import dask.array as da

    x = da.from_array(np.arange(40_000).reshape(10_000, 4), chunks=(500, 4)).map_blocks(
        kill_the_worker_on_chunk_7, dtype="i8"
    )
    y = da.from_array(np.arange(10_000), chunks=500)
    # One task per worker at a time (saturation 1.0, one thread), so a dying worker takes no innocent chunk
    # with it; a chunk is given up on after its second death.
    settings = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}
    with (
        dask.config.set(settings),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        loader = daskfeed.Loader(x, y, batch_size=50, seed=0, memory_budget="40KB", scheduler=client)
        with pytest.raises(daskfeed.ChunkReadError, match=r"array x chunk 7 \(samples 3500-3999\)") as info:
            for _ in loader:
                pass
        loader.close()
    assert isinstance(info.value.__cause__, distributed.KilledWorker)


@pytest.fixture
def one_worker():
    """A LocalCluster of one worker process, its client, and 10,000 samples read in chunks of 500."""
    import dask.array as da

    x = da.from_array(np.arange(40_000).reshape(10_000, 4), chunks=(500, 4))
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client, x


def started_loader(x, client, **knobs):
    """A loader on ``client`` that has served its first batch: the cluster is in use mid-epoch."""
    loader = daskfeed.Loader(x, batch_size=50, seed=0, memory_budget="40KB", scheduler=client, **knobs)
    loader.batch(0)
    return loader


def scale_to_zero(cluster, client):
    """Remove every worker, and return once the scheduler says so (a hang guard: the test times out if the
    worker never goes)."""
    import time

    cluster.scale(0)
    while client.nthreads():
        time.sleep(0.1)


@pytest.mark.cluster
def test_a_lost_scheduler_fails_with_the_connection_error_as_cause(one_worker):
    cluster, client, x = one_worker
    loader = started_loader(x, client)
    client.sync(cluster.scheduler.close)  # the scheduler goes away mid-epoch
    with pytest.raises(daskfeed.ChunkReadError, match="the dask cluster went away") as info:
        for i in range(len(loader)):
            loader.batch(i)
    loader.close()
    assert "scheduler" in str(info.value.__cause__) and not isinstance(info.value.__cause__, TypeError)


@pytest.mark.cluster
def test_a_cluster_scaled_to_zero_fails_the_epoch_after_no_workers_timeout(one_worker):
    """distributed waits for workers forever; the loader gives up after ``no_workers_timeout`` seconds."""
    cluster, client, x = one_worker
    loader = started_loader(x, client, no_workers_timeout=2)
    scale_to_zero(cluster, client)
    with pytest.raises(daskfeed.ChunkReadError, match="has had no workers for 2 s"):
        for i in range(len(loader)):
            loader.batch(i)
    # Given workers again, a new loader reads from the same cluster.
    cluster.scale(1)
    client.wait_for_workers(1)
    with daskfeed.Loader(x, batch_size=50, seed=0, memory_budget="40KB", scheduler=client) as again:
        assert len(list(again)) == len(again)
    loader.close()


@pytest.mark.cluster
def test_close_returns_while_a_read_waits_on_a_cluster_without_workers(one_worker):
    """``close()`` from another thread ends the wait and cancels the cluster's futures, whatever the cluster
    does; the consumer gets DaskfeedError."""
    import threading

    cluster, client, x = one_worker
    loader = started_loader(x, client)
    scale_to_zero(cluster, client)
    failed = []

    def consume():
        try:
            for i in range(len(loader)):
                loader.batch(i)
        except daskfeed.DaskfeedError as err:
            failed.append(err)

    consumer = threading.Thread(target=consume)
    stalls = loader.stats["stalls"]
    consumer.start()
    for _ in range(300):  # until a batch finds its window not made yet (a hang guard, not a timing)
        if loader.stats["stalls"] > stalls:
            break
        threading.Event().wait(0.2)
    # The consumer waits for a window that no worker will make (the default wait for workers is 60 s).
    assert loader.stats["stalls"] > stalls and consumer.is_alive() and not failed
    loader.close()
    consumer.join(timeout=30)  # a hang guard: close ends the wait within a slice
    assert not consumer.is_alive() and failed and "closed" in str(failed[0])
    for _ in range(150):  # the reading threads cancel their futures as they leave (a hang guard, not a timing)
        if not client.futures:
            break
        threading.Event().wait(0.2)
    assert not client.futures, "the loader's futures were not cancelled"

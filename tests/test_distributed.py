"""The same loader on a real distributed.LocalCluster gives the same batches as the local threads."""

from __future__ import annotations

import numpy as np
import pytest

import daskfeed

distributed = pytest.importorskip("distributed")


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
            assert not default._scheduler.shared_memory
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
        assert not remote._scheduler.shared_memory
        got = [remote.batch(i)[1] for i in range(len(remote))]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)

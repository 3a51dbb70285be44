"""Shared fixtures: small seeded zarr stores on disk, and quiet TensorFlow logs."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def write_store(path, arrays: dict, chunks: dict) -> str:
    """Write ``arrays`` into a zarr group at ``path``, chunked on axis 0 by ``chunks[name]``."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, data in arrays.items():
        group.create_array(name, data=data, chunks=(chunks[name], *data.shape[1:]))
    return str(path)


def sorted_blobs(n: int, seed: int = 0, spread: float = 3.0, classes: int = 10, dim: int = 32):
    """Overlapping Gaussian blobs, one per class (the same centers for every seed), sorted by label along the
    sample axis: the hard case for mixing. ``seed`` draws the samples."""
    centers = np.random.default_rng(1234).normal(size=(classes, dim)).astype("f4") * 1.5
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, classes, n))
    x = centers[y] + rng.normal(scale=spread, size=(n, dim)).astype("f4")
    return x.astype("f4"), y.astype("i8")


def daskfeed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("daskfeed-")]


def join_daskfeed_threads() -> list[str]:
    """Wait for daskfeed threads to end (a hang guard, not a timing) and return those still alive.

    A thread that ends may have started another (a prefetch thread starts read threads), so join until none
    is left, for at most a minute in all."""
    import time

    deadline = time.monotonic() + 60
    while daskfeed_threads() and time.monotonic() < deadline:
        for t in daskfeed_threads():
            t.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t.name for t in daskfeed_threads()]


@pytest.fixture
def xy_store(tmp_path):
    """1,003 samples: x (1003, 3) float32 chunked by 100, y = row index chunked by 250 (ragged, different)."""
    n = 1003
    x = (np.arange(n * 3, dtype="f4").reshape(n, 3)) / 3
    y = np.arange(n, dtype="i8")
    return write_store(tmp_path / "xy.zarr", {"x": x, "y": y}, {"x": 100, "y": 250})


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path``, stopped when the test ends."""
    import functools
    import http.server
    import socketserver
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def quiet_layout_warnings():
    """Tiny budgets and batches out of order on purpose (both warnings have tests of their own): ignore
    ``LayoutWarning`` and ``OrderWarning``. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import warnings

    import daskfeed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.LayoutWarning)
        warnings.simplefilter("ignore", daskfeed.OrderWarning)
        yield

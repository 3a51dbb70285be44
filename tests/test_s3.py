"""Reading from a real S3-compatible server (moto's, started on 127.0.0.1 by the tests): the same batches as from
the local copy, a server that stops answering fails as ChunkReadError within read_timeout, an endpoint nobody
listens on fails at open_zarr with the real cause first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import write_store

import daskfeed

pytestmark = pytest.mark.slow  # a moto server per test, and read timeouts waited out: 3-6 s a test

s3fs = pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install 'daskfeed[test]')")
pytest.importorskip("moto.server", reason="the S3 tests need moto's server (pip install 'moto[server]')")

N = 2000
#: Small enough that the loader streams: 3 windows of about 2 chunks each, re-read every epoch.
BUDGET = "192KiB"
KNOBS = dict(batch_size=32, seed=0, memory_budget=BUDGET, reads_per_chunk=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 server in a subprocess on 127.0.0.1, which a test may freeze (SIGSTOP) like a stalled store."""

    def __init__(self, log):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60  # a hang guard for a slow start, not a timing
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.proc.returncode}; see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.options = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def upload(self, local: str, url: str) -> None:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.options)
        bucket, path = url.removeprefix("s3://").split("/", 1)
        fs.mkdir(bucket)
        fs.put(local, f"{bucket}/{path}", recursive=True)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process would not act on the kill until continued
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 is reached directly
    with open(tmp_path / "moto.log", "wb") as log:
        s3 = S3Server(log)
        try:
            yield s3
        finally:
            s3.stop()


@pytest.fixture
def local_store(tmp_path):
    """Images (N, 8, 8, 3) uint8 in chunks of 128 and int64 labels in chunks of 100, as users chunk them: unalike."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 8, 8, 3), dtype="u1")
    labels = np.arange(N, dtype="i8")
    return write_store(tmp_path / "store.zarr", {"x": images, "y": labels}, {"x": 128, "y": 100})


@pytest.mark.timeout(120)
def test_an_epoch_from_s3_gives_the_batches_of_the_local_copy(server, local_store):
    server.upload(local_store, "s3://bucket/store.zarr")
    remote = daskfeed.open_zarr("s3://bucket/store.zarr", storage_options=server.options, read_timeout=30)
    local = daskfeed.open_zarr(local_store)
    assert remote["x"].chunks == local["x"].chunks and remote["y"].chunks == local["y"].chunks
    with (
        daskfeed.Loader(remote["x"], remote["y"], **KNOBS) as from_s3,
        daskfeed.Loader(local["x"], local["y"], **KNOBS) as from_disk,
    ):
        assert not from_s3.layout.resident and from_s3.layout.window_samples < N  # it streams
        count, labels = 0, []
        for (x, y), (x0, y0) in zip(from_s3, from_disk, strict=True):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)
            labels.append(y)
            count += 1
        assert count == len(from_disk)
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.arange(N))


def _open_with_timeout(how: str, server: S3Server, seconds: float):
    url = "s3://bucket/store.zarr"
    if how == "url":
        return daskfeed.open_zarr(url, storage_options=server.options, read_timeout=seconds)
    # opened with zarr (so botocore keeps its own 60 s per-request timeout), then handed to open_zarr
    group = zarr.open_group(url, mode="r", storage_options=server.options)
    return daskfeed.open_zarr(group, read_timeout=seconds)


@pytest.mark.timeout(90)  # a hang guard: before read_timeout bounded the whole fetch, this took 30-60 s or hung
@pytest.mark.parametrize("how", ["url", "zarr-group"])
def test_a_stalled_s3_server_fails_with_the_chunk_named_within_read_timeout(server, local_store, how):
    server.upload(local_store, "s3://bucket/store.zarr")
    arrays = _open_with_timeout(how, server, 2)
    with daskfeed.Loader(arrays["x"], arrays["y"], **KNOBS) as loader:
        batches = iter(loader)
        next(batches)
        server.freeze()  # the process stops: connections stay open, nothing answers
        started = time.monotonic()
        with pytest.raises(
            daskfeed.ChunkReadError, match=r"reading array [xy] chunk \d+ .*timed out after 2 s"
        ) as info:
            for _ in batches:
                pass
        elapsed = time.monotonic() - started
    print(f"\nS3 server stopped ({how}): ChunkReadError after {elapsed:.1f} s with read_timeout=2")
    assert info.value.array in ("x", "y") and "read_timeout" in str(info.value)
    assert isinstance(info.value.__cause__, TimeoutError)


@pytest.mark.timeout(120)
def test_open_zarr_on_an_endpoint_nobody_listens_on_says_so_first():
    options = {"endpoint_url": f"http://127.0.0.1:{_free_port()}", "key": "testing", "secret": "testing"}
    with pytest.raises(daskfeed.StoreError) as info:  # the default read_timeout: the client's retries end first
        daskfeed.open_zarr("s3://bucket/store.zarr", storage_options=options)
    message = str(info.value)
    assert message.startswith("cannot reach s3://bucket/store.zarr: EndpointConnectionError: "), message
    assert "is not a zarr store" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.timeout(90)  # a hang guard: each retry of the client used to wait the timeout again (minutes)
def test_open_zarr_on_a_stalled_server_says_it_cannot_reach_it(server, local_store):
    server.upload(local_store, "s3://bucket/store.zarr")
    server.freeze()
    with pytest.raises(daskfeed.StoreError, match=r"within read_timeout=2 s") as info:
        daskfeed.open_zarr("s3://bucket/store.zarr", storage_options=server.options, read_timeout=2)
    assert str(info.value).startswith("cannot reach s3://bucket/store.zarr: "), str(info.value)

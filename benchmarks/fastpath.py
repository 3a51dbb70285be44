"""daskfeed's own chunk decoding on the installed zarr: taken, equal to zarr's read, and its speed against zarr's.

``python benchmarks/fastpath.py --quick`` is CI's smoke on every zarr it installs: it fails (exit 1) unless
:meth:`daskfeed.read.codec.ChunkCodec.of` takes the images and the labels, every chunk of a shuffled epoch is read
on daskfeed's own threads (not through zarr), no :class:`daskfeed.FastPathWarning` is given, and the
batches equal zarr's own read. Without ``--quick`` it writes (once) an image store, 32x32x3 uint8 images and
int64 labels in chunks of 1,024 samples, zstd, and prints the shuffled Loader's samples/s over zarr's in-order
one-thread read in the same process, for the first epoch and the next, medians of ``--repeats``. Nothing here
asserts a time; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

import daskfeed
from daskfeed.errors import FastPathWarning
from daskfeed.read.codec import ChunkCodec

HERE = Path(__file__).resolve().parent


def make_store(path: str, samples: int, chunk: int) -> None:
    """Images whose brightness follows a random label; written once (a marker beside it says it is whole)."""
    marker = Path(f"{path}.complete")
    if marker.exists() and zarr.open_group(path, mode="r")["x"].shape[0] == samples:
        return
    rng = np.random.default_rng(0)
    root = zarr.open_group(path, mode="w")
    x = root.create_array(
        "x", shape=(samples, 32, 32, 3), chunks=(chunk, 32, 32, 3), dtype="u1", compressors=ZstdCodec()
    )
    y = root.create_array("y", shape=(samples,), chunks=(chunk,), dtype="i8", compressors=ZstdCodec())
    step = chunk * 8
    for start in range(0, samples, step):
        stop = min(samples, start + step)
        labels = rng.integers(0, 10, stop - start)
        noise = rng.integers(-60, 61, (stop - start, 32, 32, 3), dtype=np.int16)
        x[start:stop] = np.clip(labels[:, None, None, None] * 20 + 30 + noise, 0, 255).astype("u1")
        y[start:stop] = labels
    marker.write_text("ok")


@contextlib.contextmanager
def chunk_file_reads(root: str):
    """Count, by thread name, the chunk files under ``root`` read with ``Path.read_bytes`` (both daskfeed's
    local reads and zarr's LocalStore read files that way; only daskfeed's run on threads named daskfeed-*)."""
    reads: dict[str, int] = {}
    original = pathlib.Path.read_bytes
    prefixes = (str(Path(root)), str(Path(root).resolve()))

    def counted(self):
        path = str(self)
        if path.startswith(prefixes) and "/c/" in path:
            name = threading.current_thread().name
            name = "daskfeed" if name.startswith("daskfeed-") else name
            reads[name] = reads.get(name, 0) + 1
        return original(self)

    pathlib.Path.read_bytes = counted
    try:
        yield reads
    finally:
        pathlib.Path.read_bytes = original


def smoke(workdir: str, samples: int = 20_000, chunk: int = 1024) -> list[str]:
    """The fast-path checks; returns what failed (empty when all hold)."""
    path = str(Path(workdir) / "smoke.zarr")
    make_store(path, samples, chunk)
    failed = []
    root = zarr.open_group(path, mode="r")
    for name in ("x", "y"):
        if ChunkCodec.of(root[name]) is None:
            failed.append(f"ChunkCodec.of(array {name!r}) is None: daskfeed's own decoding is not taken")
    x, y = root["x"][:], root["y"][:]
    arrays = daskfeed.open_zarr(path)
    ids = np.arange(samples)
    knobs = dict(batch_size=128, seed=0, memory_budget="32MB", reads_per_chunk=1)  # windows, not held whole
    inputs = {"image": arrays["x"], "label": arrays["y"]}
    with chunk_file_reads(path) as reads, daskfeed.Loader(inputs, ids, **knobs) as loader:
        batches = list(loader)
    got_x, got_y = (np.concatenate([b[0][name] for b in batches]) for name in ("image", "label"))
    got_ids = np.concatenate([b[1] for b in batches])
    if np.array_equal(got_ids, ids):
        failed.append("the epoch came in storage order: not shuffled")
    order = np.argsort(got_ids)
    if not (
        np.array_equal(got_ids[order], ids) and np.array_equal(got_x[order], x) and np.array_equal(got_y[order], y)
    ):
        failed.append("the Loader's batches differ from zarr's own read of the store")
    stored = sum(1 for p in Path(path).rglob("*") if p.is_file() and "/c/" in str(p))
    if reads.get("daskfeed", 0) < stored or set(reads) != {"daskfeed"}:
        failed.append(f"chunk files read by thread: {reads} ({stored} stored): not every chunk read by daskfeed")
    print(f"chunk files read per thread: {reads}; {stored} stored", flush=True)
    return failed


def measure(args: argparse.Namespace) -> dict:
    """zarr's in-order read and the shuffled Loader (epochs 0 and 1), interleaved after a warm-up: each repeat's
    ratios are to the mean of the in-order reads just before and after it (a shared machine drifts); medians."""
    make_store(args.store, args.samples, args.chunk)
    root = zarr.open_group(args.store, mode="r")
    zx, zy = root["x"], root["y"]
    n, chunk = zx.shape[0], zx.chunks[0]
    if ChunkCodec.of(zx) is None:
        print("note: daskfeed's own decoding is OFF for x on this zarr", flush=True)

    def raw() -> float:
        started = time.perf_counter()
        for start in range(0, n, chunk):
            zx[start : start + chunk]
            zy[start : start + chunk]
        return n / (time.perf_counter() - started)

    arrays = daskfeed.open_zarr(args.store)
    rates: dict[str, list[float]] = {"raw": [], "epoch0": [], "epoch1": []}
    ratios: dict[str, list[float]] = {"epoch0": [], "epoch1": []}
    before = raw()  # and the page cache is warm
    for repeat in range(-1, args.repeats):  # -1: a warm-up (the process's first windows fault their pages in)
        knobs = dict(batch_size=args.batch_size, seed=repeat + 1, memory_budget=args.memory_budget, reads_per_chunk=1)
        got = {}
        started = time.perf_counter()
        with daskfeed.Loader(arrays["x"], arrays["y"], **knobs) as loader:
            for epoch in (0, 1):
                served = sum(len(b[1]) for b in loader)
                now = time.perf_counter()
                got[f"epoch{epoch}"] = served / (now - started)
                started = now
            resident = loader.stats["resident"]
        after = raw()
        if repeat < 0:
            before = after
            continue
        rates["raw"].append((before + after) / 2)
        for key, rate in got.items():
            rates[key].append(rate)
            ratios[key].append(rate / rates["raw"][-1])
        before = after
        print(
            f"  in order {rates['raw'][-1]:,.0f}/s; epoch 0 {got['epoch0']:,.0f}/s ({ratios['epoch0'][-1]:.2f}x), "
            f"epoch 1 {got['epoch1']:,.0f}/s ({ratios['epoch1'][-1]:.2f}x)",
            flush=True,
        )
    medians = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "samples": n,
        "memory_budget": args.memory_budget,
        "resident": resident,
        "samples_per_s": medians,
        "runs": rates,
        "epoch0_over_raw": statistics.median(ratios["epoch0"]),
        "epoch1_over_raw": statistics.median(ratios["epoch1"]),
    }
    print(
        f"zarr {result['zarr']}, numpy {result['numpy']}, Python {result['python']}: {n:,} samples; zarr in order, "
        f"one thread {medians['raw']:,.0f}/s; shuffled Loader epoch 0 {medians['epoch0']:,.0f}/s "
        f"({result['epoch0_over_raw']:.2f}x), epoch 1 {medians['epoch1']:,.0f}/s ({result['epoch1_over_raw']:.2f}x) "
        f"(medians of {args.repeats} repeats; ratios per repeat)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI's smoke: fail unless the fast path is taken")
    parser.add_argument("--store", default=str(HERE / "results" / "tmp" / "fastpath.zarr"))
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    print(f"zarr {zarr.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}", flush=True)
    if args.quick:
        with tempfile.TemporaryDirectory() as workdir, warnings.catch_warnings():
            warnings.simplefilter("error", FastPathWarning)
            try:
                failed = smoke(workdir)
            except Exception as err:  # a FastPathWarning (an error here), raised at once or from a reading thread
                failed = [f"{type(err).__name__}: {err}"]
        for line in failed:
            print(f"FAILED: {line}", flush=True)
        print("fast path smoke: " + ("FAILED" if failed else "ok"), flush=True)
        return 1 if failed else 0
    result = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

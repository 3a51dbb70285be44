"""First figure: samples/s of a shuffled epoch through each front-end against reading the chunks in order.

One store, one process, medians of repeats; every figure is also printed as a ratio to the raw read, so a
noisy machine does not lie. ``python benchmarks/epoch.py --quick`` is the smoke size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import zarr

import daskfeed


def make_store(path: str, samples: int, chunk: int) -> None:
    rng = np.random.default_rng(0)
    root = zarr.open_group(path, mode="w")
    images = root.create_array("x", shape=(samples, 32, 32, 3), chunks=(chunk, 32, 32, 3), dtype="u1")
    labels = root.create_array("y", shape=(samples,), chunks=(chunk,), dtype="i8")
    for start in range(0, samples, chunk * 16):
        stop = min(samples, start + chunk * 16)
        images[start:stop] = rng.integers(0, 255, (stop - start, 32, 32, 3), dtype="u1")
        labels[start:stop] = rng.integers(0, 10, stop - start)


def raw_read(path: str) -> int:
    root = zarr.open_group(path, mode="r")
    x, y = root["x"], root["y"]
    chunk = x.chunks[0]
    n = 0
    for start in range(0, x.shape[0], chunk):
        n += len(x[start : start + chunk]) + 0 * len(y[start : start + chunk])
    return n


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="bench.zarr")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--quick", action="store_true", help="a smoke size: 10,000 samples, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 10_000, 1

    import tensorflow as tf

    make_store(args.store, args.samples, args.chunk)
    arrays = daskfeed.open_zarr(args.store)
    kwargs = dict(batch_size=args.batch_size, memory_budget=args.memory_budget, reads_per_chunk=1)

    def sequence_epoch(seed: int) -> int:
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], seed=seed, **kwargs)
        n = sum(len(seq[i][1]) for i in range(len(seq)))  # as Keras calls it: __getitem__ in order
        seq.close()
        return n

    def dataset_epoch(seed: int) -> int:
        ds = daskfeed.as_dataset(arrays["x"], arrays["y"], seed=seed, **kwargs)
        count = ds.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b[1], out_type=tf.int64)[0])
        return int(count)  # graph mode, as fit consumes it

    ways = {"raw zarr, chunks in order, 1 thread": lambda seed: raw_read(args.store)}
    ways["daskfeed as_sequence, shuffled"] = sequence_epoch
    ways["daskfeed as_dataset, shuffled"] = dataset_epoch
    rates = {}
    for name, run in ways.items():
        times = []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            n = run(repeat)
            times.append(time.perf_counter() - started)
            assert n == args.samples, (name, n)
        rates[name] = args.samples / statistics.median(times)
    raw = rates["raw zarr, chunks in order, 1 thread"]
    print(
        f"{args.samples} samples of 32x32x3 uint8 + int64, chunks of {args.chunk}, batch {args.batch_size}, "
        f"{os.cpu_count()} cores, median of {args.repeats}"
    )
    print("| way of reading | samples/s | ratio to raw |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / raw:.2f} |")
    return rates


if __name__ == "__main__":
    main()

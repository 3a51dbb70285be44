"""A store written in random order by hand (not by ingest): ``reads_per_chunk="auto"`` before and after it
measures the labels' mixing, in one process.

``python benchmarks/mixing.py`` writes N images of 32x32x3 uint8 and int64 labels in random order with zarr
(images chunked by 1,361 samples, ~4 MiB, the issue's case; and by zarr's ``chunks="auto"``), and for each
reports: the reads per chunk auto took before (what it decides without a measure of labels, given here as
``reads_per_chunk``: the same batches) and takes now, one epoch's samples/s through the Loader at a 64 MB
budget, the decode amplification (bytes decoded over bytes served), the ratio after/before (the median of
``--repeats`` epochs, each from a fresh Loader, before and after alternating), and the Loader's construction
time with and without the measure (median of 5). ``--quick`` is the smoke size. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr

import daskfeed
from daskfeed import loader as loader_module
from daskfeed.inputs import Leaf
from daskfeed.layout import choose_layout

BUDGET = "64MB"


def write(path: Path, n: int, chunks: str | int) -> Path:
    rng = np.random.default_rng(0)
    group = zarr.open_group(str(path), mode="w")
    shape = "auto" if chunks == "auto" else (chunks, 32, 32, 3)
    x = group.create_array("x", shape=(n, 32, 32, 3), dtype="u1", chunks=shape)
    step = 25_000 if chunks == "auto" else 18 * chunks  # whole chunks at a time
    for start in range(0, n, step):
        stop = min(n, start + step)
        x[start:stop] = rng.integers(0, 32, (stop - start, 32, 32, 3), dtype="u1")  # compresses, as images do
    group.create_array("y", data=rng.integers(0, 10, n).astype("i8"), chunks="auto")
    return path


def epoch(x, y, **knobs) -> tuple[float, float, int]:
    """Samples/s of one epoch through the Loader, its decode amplification, and its reads per chunk."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.LayoutWarning)
        loader = daskfeed.Loader(x, y, batch_size=128, seed=0, memory_budget=BUDGET, **knobs)
    with loader:
        started = time.perf_counter()
        served = sum(len(b[1]) for b in loader)
        seconds = time.perf_counter() - started
        stats = loader.stats
    per_sample = 32 * 32 * 3 + 8
    return served / seconds, stats["bytes_decoded"] / (served * per_sample), stats["reads_per_chunk"]


def construction(x, y, measure: bool) -> float:
    """Median seconds to make (and close) a Loader, with the labels measured or not (as before)."""
    kept = loader_module._labels
    times = []
    try:
        if not measure:
            loader_module._labels = lambda inputs: None
        for _ in range(5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", daskfeed.LayoutWarning)
                started = time.perf_counter()
                daskfeed.Loader(x, y, batch_size=128, seed=0, memory_budget=BUDGET).close()
                times.append(time.perf_counter() - started)
    finally:
        loader_module._labels = kept
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 samples (smoke size)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs of each, alternating (the median is shown)")
    parser.add_argument("--chunks", nargs="+", default=["1361", "auto"], help="images' chunk lengths, or auto")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    work = Path(tempfile.mkdtemp(prefix="daskfeed-mixing-"))
    try:
        for chunks in (c if c == "auto" else int(c) for c in args.chunks):
            arrays = daskfeed.open_zarr(str(write(work / f"{chunks}.zarr", n, chunks)))
            x, y = arrays["x"], arrays["y"]
            options = daskfeed.LoaderOptions(batch_size=128, seed=0, memory_budget=BUDGET)
            # What auto decided before labels counted: the same batches as today's auto on this store.
            before_reads = choose_layout([Leaf("x", None, x), Leaf("y", None, y)], n, options).reads_per_chunk
            stored = zarr.open_group(str(work / f"{chunks}.zarr"), mode="r")
            print(f"x chunks {stored['x'].chunks}, y chunks {stored['y'].chunks}")
            for start in range(0, n, 25_000):  # warm the page cache: one read of the store in order
                stored["x"][start : start + 25_000]
            runs = [(epoch(x, y, reads_per_chunk=before_reads), epoch(x, y)) for _ in range(args.repeats)]
            before = sorted((r[0] for r in runs), key=lambda r: r[0])[len(runs) // 2]  # the median epoch
            after = sorted((r[1] for r in runs), key=lambda r: r[0])[len(runs) // 2]
            made = construction(x, y, measure=False), construction(x, y, measure=True)
            print(
                f"images chunks={chunks!r}, {n} samples, {BUDGET}: before reads_per_chunk={before[2]} "
                f"{before[0]:,.0f} samples/s, amplification {before[1]:.2f}x; after reads_per_chunk={after[2]} "
                f"{after[0]:,.0f} samples/s, amplification {after[1]:.2f}x; after/before {after[0] / before[0]:.2f}x; "
                f"construction {made[0] * 1e3:.1f} ms before, {made[1] * 1e3:.1f} ms after"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

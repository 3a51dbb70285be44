"""Samples as users define them: windows of a series and patches of images, read once per chunk, against the
ways users have today, in one process.

``python benchmarks/samples.py`` writes, with zarr,

- a (time, 64) float32 series larger than the memory budget given to daskfeed, with a target per step, and
  serves windows of 48 steps (every step a window start) through ``as_dataset`` consumed in graph mode
  (``Dataset.reduce``, as ``model.fit`` does), against ``keras.utils.timeseries_dataset_from_array`` on the same
  data in RAM (shuffled, the same batch) and a hand-written ``keras.utils.PyDataset`` that slices zarr per window;
- (N, 512, 512, 3) uint8 images, and serves 64x64 patches through ``as_dataset`` in graph mode against xbatcher's
  ``BatchGenerator`` over the same store (patches of every image, computed batch by batch);

and reports samples/s, the ratios, and the decode amplification daskfeed measured in its second epoch (bytes it
decoded over the bytes of the arrays) at ``reads_per_chunk=1``. Writes ``results/samples[-quick].md`` and
``.json``. ``--quick`` is the smoke size. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import zarr

import daskfeed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import machine  # noqa: E402  (beside this script, not a package)

LENGTH, FEATURES, PATCH = 48, 64, 64


def graph_count(ds, leaf: int = 0) -> tuple[int, float]:
    """Samples of one pass over ``ds`` consumed in graph mode, and the seconds it took."""
    import tensorflow as tf

    started = time.perf_counter()
    n = ds.reduce(tf.constant(0, tf.int64), lambda c, b: c + tf.shape(b[leaf], out_type=tf.int64)[0])
    return int(n), time.perf_counter() - started


def epoch_decode(ds) -> tuple[int, float]:
    """One more pass over a daskfeed dataset: the bytes its loader decoded during it, and the seconds."""
    loader = ds.loader
    before = loader.stats["bytes_decoded"]
    _, seconds = graph_count(ds)
    return loader.stats["bytes_decoded"] - before, seconds


def fitting_budget(x, y, budget: int, **knobs) -> int:
    """``budget``, or the smallest that works (plus 10%) where a read unit and a batch need more."""
    try:
        daskfeed.Loader(x, y, memory_budget=budget, **knobs).close()
    except daskfeed.MemoryBudgetError as err:
        return int(err.smallest * 1.1)
    return budget


def streamed(row: dict, loader, decoded: int, sizes: dict) -> None:
    """Decode amplification of an epoch: bytes decoded over the bytes of the arrays read window by window (those
    held whole, the labels here, were decoded once before it), and over every array."""
    row["amplification_measured"] = decoded / sum(sizes[name] for name in loader.layout.windowed)
    row["amplification_all_arrays"] = decoded / sum(sizes.values())
    row["held_whole"] = list(loader.layout.held)
    row["amplification_layout"] = loader.layout.amplification


def measure_daskfeed(row: dict, path: str, budget: int, knobs: dict, samples: int, sizes: dict, what: str):
    """daskfeed's two epochs over the store at ``path`` through ``as_dataset`` in graph mode, into ``row``: rates
    of the first and second epoch and the second's decode amplification. Returns the dataset."""
    arrays = daskfeed.open_zarr(path)
    budget = fitting_budget(arrays["x"], arrays["y"], budget, **knobs)
    row["budget_mib"] = budget / 2**20
    ds = daskfeed.as_dataset(arrays["x"], arrays["y"], memory_budget=budget, **knobs)
    loader = ds.loader
    row["layout"] = loader.layout.describe()
    n0, first = graph_count(ds)
    decoded, later = epoch_decode(ds)
    assert n0 == samples
    row["daskfeed_first_epoch"] = samples / first
    row["daskfeed"] = samples / later
    streamed(row, loader, decoded, sizes)
    print(f"  daskfeed as_dataset: {row['daskfeed']:,.0f} {what}/s, decoded {row['amplification_measured']:.3f}x")
    return ds


def series(args: argparse.Namespace, work: Path) -> dict:
    import keras

    steps, bs = args.steps, args.batch_size
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.normal(size=(steps + LENGTH, FEATURES)).astype("f4"), axis=0) / 100
    x_np, y_np = data[:-LENGTH], data[LENGTH:, 0].copy()  # the target of a window: the step after it
    path = str(work / "series.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("x", data=x_np, chunks=(args.series_chunk, FEATURES))
    group.create_array("y", data=y_np, chunks=(args.series_chunk,))
    nbytes = x_np.nbytes + y_np.nbytes
    budget = nbytes // 3
    windows = steps - LENGTH + 1
    print(
        f"series: {steps:,} x {FEATURES} float32, {nbytes / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB", flush=True
    )
    row: dict = {"steps": steps, "mib": nbytes / 2**20, "budget_mib": budget / 2**20, "windows": windows}

    knobs = dict(batch_size=bs, seed=0, window={0: LENGTH}, stride={0: 1}, reads_per_chunk=1)
    ds = measure_daskfeed(row, path, budget, knobs, windows, {"x": x_np.nbytes, "y": y_np.nbytes}, "windows")

    ts = keras.utils.timeseries_dataset_from_array(
        x_np, y_np, sequence_length=LENGTH, sequence_stride=1, batch_size=bs, shuffle=True, seed=0
    )
    timed = min(-(-windows // bs), args.keras_batches)  # it runs at a few thousand windows/s here: part of a pass
    graph_count(ts.take(2))
    n1, seconds = graph_count(ts.take(timed))
    row["timeseries_dataset_from_array"] = n1 / seconds
    row["timeseries_note"] = f"{timed} batches timed"
    print(f"  timeseries_dataset_from_array in RAM: {row['timeseries_dataset_from_array']:,.0f} windows/s")

    zx, zy = zarr.open_array(path + "/x", mode="r"), zarr.open_array(path + "/y", mode="r")
    starts = np.random.default_rng(0).permutation(windows)

    class ZarrWindows(keras.utils.PyDataset):
        """What users write first: a window is a zarr slice."""

        def __len__(self):
            return -(-windows // bs)

        def __getitem__(self, i):
            s = starts[i * bs : (i + 1) * bs]
            return np.stack([zx[t : t + LENGTH] for t in s]), zy.get_coordinate_selection(s)

    seq = ZarrWindows()
    count = min(len(seq), args.slow_batches)
    started = time.perf_counter()
    served = sum(len(seq[i][1]) for i in range(count))
    row["pydataset_zarr_slices"] = served / (time.perf_counter() - started)
    print(f"  PyDataset slicing zarr per window: {row['pydataset_zarr_slices']:,.0f} windows/s ({count} batches)")
    row["vs_timeseries"] = row["daskfeed"] / row["timeseries_dataset_from_array"]
    row["vs_pydataset"] = row["daskfeed"] / row["pydataset_zarr_slices"]
    del ds
    return row


def patches(args: argparse.Namespace, work: Path) -> dict:
    import dask.array as da
    import xarray as xr
    import xbatcher

    n, side = args.images, 512
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    path = str(work / "images.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("x", data=images, chunks=(args.image_chunk, side, side, 3))
    group.create_array("y", data=labels, chunks=(n,))
    nbytes = images.nbytes + labels.nbytes
    del images
    budget = nbytes // 3
    per_image = (side // PATCH) ** 2
    total = n * per_image
    print(f"patches: {n} images of 512x512x3, {nbytes / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB", flush=True)
    row: dict = {"images": n, "mib": nbytes / 2**20, "budget_mib": budget / 2**20, "patches": total}

    knobs = dict(batch_size=args.batch_size, seed=0, window={1: PATCH, 2: PATCH}, reads_per_chunk=1)
    measure_daskfeed(row, path, budget, knobs, total, {"x": nbytes - labels.nbytes, "y": labels.nbytes}, "patches")

    z = zarr.open_array(path + "/x", mode="r")
    image = xr.DataArray(da.from_zarr(z), dims=("image", "h", "w", "c"))
    gen = xbatcher.BatchGenerator(
        image, input_dims={"h": PATCH, "w": PATCH, "c": 3}, batch_dims={"image": args.image_chunk}
    )
    count = min(len(gen), args.slow_batches * 8)  # an item is one patch of each image of the batch
    started = time.perf_counter()
    served = 0
    for i in range(count):
        served += int(np.asarray(gen[i].values).shape[0])
    row["xbatcher"] = served / (time.perf_counter() - started)
    row["xbatcher_note"] = (
        f"BatchGenerator(input_dims=64x64x3, batch_dims={{image: {args.image_chunk}}}), {count} items"
    )
    print(f"  xbatcher {xbatcher.__version__} BatchGenerator: {row['xbatcher']:,.0f} patches/s ({count} items)")
    row["vs_xbatcher"] = row["daskfeed"] / row["xbatcher"]
    return row


def markdown(report: dict) -> str:
    s, p = report["series"], report["patches"]
    m = report["machine"]
    lines = [
        f"# daskfeed samples: windows and patches ({'quick' if report['args']['quick'] else 'full'} size)",
        "",
        f"Same process, batch {report['args']['batch_size']}, `reads_per_chunk=1`, memory budget a third of the "
        "data, daskfeed's second epoch timed (the first in brackets), consumed in graph mode (`Dataset.reduce`). "
        + ", ".join(f"{k} {v}" for k, v in m.items() if k != "platform"),
        "",
        f"Windows of {LENGTH} steps, every step, over a ({s['steps']:,}, {FEATURES}) float32 series "
        f"({s['mib']:.0f} MiB, budget {s['budget_mib']:.0f} MiB): `{s['layout']}`",
        "",
        "| way of reading | windows/s | daskfeed over it |",
        "|---|---:|---:|",
        f"| daskfeed `as_dataset(window={{0: {LENGTH}}})` from zarr | {s['daskfeed']:,.0f} "
        f"({s['daskfeed_first_epoch']:,.0f}) | |",
        f"| `keras.utils.timeseries_dataset_from_array`, data in RAM ({s['timeseries_note']}) | "
        f"{s['timeseries_dataset_from_array']:,.0f} | "
        f"**{s['vs_timeseries']:.2f}x** (target >= 1.0x) |",
        f"| hand-written `PyDataset` slicing zarr per window | {s['pydataset_zarr_slices']:,.0f} | "
        f"**{s['vs_pydataset']:.1f}x** |",
        "",
        f"Decode amplification of the windows: {s['amplification_measured']:.3f}x measured in epoch 2, bytes decoded "
        f"over the bytes of x (y, held whole, was decoded once before; over x and y: "
        f"{s['amplification_all_arrays']:.3f}x; the layout's estimate {s['amplification_layout']:.3f}x). Target 1.0x.",
        "",
        f"Patches of {PATCH}x{PATCH} from {p['images']} images of 512x512x3 uint8 ({p['mib']:.0f} MiB, budget "
        f"{p['budget_mib']:.0f} MiB): `{p['layout']}`",
        "",
        "| way of reading | patches/s | daskfeed over it |",
        "|---|---:|---:|",
        f"| daskfeed `as_dataset(window={{1: {PATCH}, 2: {PATCH}}})` from zarr | {p['daskfeed']:,.0f} "
        f"({p['daskfeed_first_epoch']:,.0f}) | |",
        f"| xbatcher `{p['xbatcher_note']}` | {p['xbatcher']:,.0f} | **{p['vs_xbatcher']:.1f}x** (target >= 10x) |",
        "",
        f"Decode amplification of the patches: {p['amplification_measured']:.3f}x measured in epoch 2, bytes decoded "
        f"over the bytes of the images (labels held whole; over both: {p['amplification_all_arrays']:.3f}x; the "
        f"layout's estimate {p['amplification_layout']:.3f}x). Target 1.0x.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000, help="time steps of the series")
    parser.add_argument("--series-chunk", type=int, default=4096, help="steps per zarr chunk")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--image-chunk", type=int, default=4, help="images per zarr chunk")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--slow-batches", type=int, default=20, help="batches timed of the slow ways")
    parser.add_argument("--keras-batches", type=int, default=400, help="batches of timeseries_dataset_from_array timed")
    parser.add_argument("--work", default=str(HERE / "results" / "tmp" / "samples"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quick", action="store_true", help="smoke size: 20,000 steps, 24 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.images, args.slow_batches = min(args.steps, 20_000), min(args.images, 24), 3
        args.keras_batches = min(args.keras_batches, 40)
        args.series_chunk, args.image_chunk = min(args.series_chunk, 1024), min(args.image_chunk, 2)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.LayoutWarning)
        report["series"] = series(args, work)
        report["patches"] = patches(args, work)
    report["machine"] = machine()
    shutil.rmtree(work, ignore_errors=True)
    tag = "samples-quick" if args.quick else "samples"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (out / f"{tag}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()

"""daskfeed on stores as users write them: zarr, dask and xarray defaults, labels chunked unlike images, a
sharded v3 array and ingest's own layout, each against reading the same store in order.

``python benchmarks/layouts.py`` makes 100,000 images of 32x32x3 uint8 (a class template under noise, sorted
by label) with int64 labels, writes them in each layout, and measures in this process, for each: the in-order
read (zarr, chunk after chunk, one thread), daskfeed at its defaults (the data fits: first batch, first and
second epoch), and at a memory budget of 10% of the data (read units, reads per chunk, decode amplification,
one epoch checked to serve every sample once, shards) with the accuracy of a BatchNorm model trained there
against the same model trained on a full in-RAM shuffle. Writes ``results/layouts[-quick].md`` and ``.json``.
``--quick`` is the smoke size the tests run. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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

LAYOUTS = ("zarr defaults", "dask defaults", "xarray to_zarr", "x by 1,000, y by 1,024", "10,000-sample chunks")
LAYOUTS += ("sharded v3 (~1 MB inner chunks)", "daskfeed ingest")


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of 10 classes (a fixed template each, at 5% under 95% noise), sorted by label: the hard case.

    Hard enough that mixing shows: on 20,000 of them, 2 epochs of the model below reach 0.73 on a full
    shuffle and 0.13 trained in the sorted order."""
    templates = np.random.default_rng(1234).integers(0, 256, (10, 32, 32, 3)).astype(np.int16)
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, 10, n))
    x = np.empty((n, 32, 32, 3), np.uint8)
    for start in range(0, n, 10_000):  # in blocks: int16 temporaries of the whole set would be 2 GB
        stop = min(n, start + 10_000)
        noise = rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.int16)
        x[start:stop] = (templates[y[start:stop]] + noise * 19) // 20
    return x, y.astype(np.int64)


def write_layout(path: str, layout: str, x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` the way each tool does by default."""
    import dask.array as da

    shutil.rmtree(path, ignore_errors=True)
    n = len(y)
    if layout == "zarr defaults":
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks="auto")
        group.create_array("y", data=y, chunks="auto")
    elif layout == "dask defaults":
        da.from_array(x, chunks="auto").to_zarr(path, component="x")
        da.from_array(y, chunks="auto").to_zarr(path, component="y")
    elif layout == "xarray to_zarr":
        import xarray as xr

        xr.Dataset({"x": (("sample", "h", "w", "c"), x), "y": (("sample",), y)}).to_zarr(path, mode="w")
    elif layout == "x by 1,000, y by 1,024":
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(1000, 32, 32, 3))
        group.create_array("y", data=y, chunks=(1024,))
    elif layout == "10,000-sample chunks":
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(min(n, 10_000), 32, 32, 3))
        group.create_array("y", data=y, chunks=(min(n, 10_000),))
    elif layout.startswith("sharded"):
        inner = min(n, 341)  # 341 images of 3 KiB: ~1 MB decoded
        group = zarr.open_group(path, mode="w")
        group.create_array("x", data=x, chunks=(inner, 32, 32, 3), shards=(inner * 30, 32, 32, 3))
        group.create_array("y", data=y, chunks=(inner * 30,))
    elif layout == "daskfeed ingest":
        daskfeed.ingest({"x": x, "y": y}, path)
    else:
        raise ValueError(layout)


def in_order_seconds(path: str) -> float:
    """Read every chunk of every array in order, zarr on one thread: what a hand-written loader is bound by."""
    group = zarr.open_group(path, mode="r")
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for _name, array in group.arrays():
            step = int(array.chunks[0])
            for start in range(0, array.shape[0], step):
                array[start : start + step]
        best = min(best, time.perf_counter() - started)
    return best


def defaults(path: str, batch: int, repeats: int = 3) -> dict:
    """daskfeed at its defaults through as_sequence, as Keras fit(shuffle=False) reads it: the first batch of
    ``repeats`` fresh loaders (median), then the first epoch and ``repeats`` more epochs of the last one."""
    arrays = daskfeed.open_zarr(path)
    n = arrays["x"].shape[0]
    firsts = []
    for _ in range(repeats):
        started = time.perf_counter()
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=batch, seed=0)
        seq[0]
        firsts.append(time.perf_counter() - started)
        if len(firsts) < repeats:
            seq.close()
    for i in range(1, len(seq)):
        seq[i]
    epoch1 = time.perf_counter() - started
    later = []
    for _ in range(repeats):
        seq.on_epoch_begin()
        seq.on_epoch_end()
        started = time.perf_counter()
        for i in range(len(seq)):
            seq[i]
        later.append(n / (time.perf_counter() - started))
    stats = seq.loader.stats
    seq.close()
    return {
        "first_batch_s": statistics.median(firsts),
        "first_batch_runs_s": firsts,
        "epoch1_samples_per_s": n / epoch1,
        "epoch2_samples_per_s": statistics.median(later),
        "later_epochs_samples_per_s": later,
        "resident": stats["resident"],
        "windows_computed": stats["windows_computed"],
        "layout": seq.loader.layout.describe(),
    }


def small_budget(path: str, batch: int, budget: int, y: np.ndarray) -> dict:
    """At 10% of the data: the layout chosen, one epoch checked sample by sample (labels), shards."""
    arrays = daskfeed.open_zarr(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", daskfeed.LayoutWarning)
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=batch, seed=0, memory_budget=budget)
    layout = loader.layout
    started = time.perf_counter()
    served = np.zeros(10, np.int64)
    count = 0
    for _x, labels in loader:
        served += np.bincount(labels, minlength=10)
        count += len(labels)
    seconds = time.perf_counter() - started
    stats = loader.stats
    loader.close()
    units = len(arrays["x"].chunks[0])
    shard_counts = sorted({min(2, units), units})
    shards_ok = all(_shards_partition(arrays, budget, count_) for count_ in shard_counts)
    return {
        "read_units": layout.n_units,
        "x_chunks": units,
        "reads_per_chunk": layout.reads_per_chunk,
        "amplification": layout.amplification,
        "held": list(layout.held),
        "samples_per_s": count / seconds,
        "bytes_decoded_per_epoch": stats["bytes_decoded"],
        "exactly_once": bool(count == len(y) and np.array_equal(served, np.bincount(y, minlength=10))),
        "shards_checked": shard_counts,
        "shards_partition": shards_ok,
        "warned": [str(w.message) for w in caught if issubclass(w.category, daskfeed.LayoutWarning)][:1],
    }


def _shards_partition(arrays: dict, budget: int, count: int) -> bool:
    """Shards of ``count``: their plans' samples are disjoint and make the epoch (plans only, no reads)."""
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.LayoutWarning)
        for index in range(count):
            with daskfeed.Loader(arrays["x"], arrays["y"], seed=0, memory_budget=budget, shard=(index, count)) as s:
                plan = s.plan(0)
                seen.append(np.concatenate([plan.samples(w) for w in range(plan.n_windows)]))
    every = np.concatenate(seen)
    return bool(len(every) == arrays["x"].shape[0] and np.array_equal(np.sort(every), np.arange(len(every))))


def model():
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((32, 32, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    net.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def accuracy(path: str, batch: int, budget: int, epochs: int, test: tuple) -> float:
    arrays = daskfeed.open_zarr(path)
    net = model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskfeed.LayoutWarning)
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=batch, seed=0, memory_budget=budget)
    net.fit(seq, epochs=epochs, shuffle=False, verbose=0)
    seq.close()
    return float(net.evaluate(*test, verbose=0)[1])


def store_path(args: argparse.Namespace, layout: str) -> str:
    return str(Path(args.work) / (layout.split(" (")[0].replace(" ", "-").replace(",", "") + ".zarr"))


def measure_layout(args: argparse.Namespace, layout: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Everything but training: the store written, the in-order read, the defaults, the 10% budget."""
    path = store_path(args, layout)
    started = time.perf_counter()
    write_layout(path, layout, x, y)
    group = zarr.open_group(path, mode="r")
    row = {
        "layout": layout,
        "x_chunks": list(group["x"].chunks),
        "y_chunks": list(group["y"].chunks),
        "write_s": time.perf_counter() - started,
    }
    row["in_order_s"] = in_order_seconds(path)
    row["in_order_samples_per_s"] = len(y) / row["in_order_s"]
    row["defaults"] = defaults(path, args.batch_size)
    budget = (x.nbytes + y.nbytes) // 10
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", daskfeed.LayoutWarning)
            arrays = daskfeed.open_zarr(path)
            daskfeed.Loader(arrays["x"], arrays["y"], batch_size=args.batch_size, memory_budget=budget).close()
    except daskfeed.MemoryBudgetError as err:  # at the quick size a chunk can be larger than 10% allows
        budget = err.smallest
    row["budget_bytes"] = budget
    row["budget_10pct"] = small_budget(path, args.batch_size, budget, y)
    row["first_batch_ratio"] = row["defaults"]["first_batch_s"] / row["in_order_s"]
    row["epoch2_ratio"] = row["defaults"]["epoch2_samples_per_s"] / row["in_order_samples_per_s"]
    print(
        f"  {layout}: first batch {row['first_batch_ratio']:.2f}x the in-order read's time, later epochs "
        f"{row['epoch2_ratio']:.2f}x its speed; at 10%: reads {row['budget_10pct']['reads_per_chunk']}, "
        f"amplification {row['budget_10pct']['amplification']:.1f}x",
        flush=True,
    )
    return row


def full_shuffle_accuracy(x: np.ndarray, y: np.ndarray, batch: int, epochs: int, test: tuple) -> float:
    net = model()
    net.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    return float(net.evaluate(*test, verbose=0)[1])


def markdown(report: dict) -> str:
    m, a = report["machine"], report["args"]
    lines = [
        f"{a['samples']:,} images of 32x32x3 uint8 + int64 labels, sorted by label; batch {a['batch_size']}; "
        f"ratios against reading the same store's chunks in order with zarr on one thread, in the same run. "
        + ", ".join(f"{k} {v}" for k, v in m.items()),
        "",
        "Defaults (memory_budget 1 GiB: the data fits, so it is decoded once and every epoch is a full shuffle; "
        "first batch: median of 3 fresh loaders; later epochs: median of 3):",
        "",
        "| layout | x chunks | y chunks | in-order read | first batch | first batch / in-order read | "
        "epoch 1 | later epochs | later / in-order |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        d = r["defaults"]
        lines.append(
            f"| {r['layout']} | {tuple(r['x_chunks'])} | {tuple(r['y_chunks'])} | "
            f"{r['in_order_samples_per_s']:,.0f}/s ({r['in_order_s']:.2f}s) | {d['first_batch_s']:.2f}s | "
            f"**{r['first_batch_ratio']:.2f}x** | {d['epoch1_samples_per_s']:,.0f}/s | "
            f"{d['epoch2_samples_per_s']:,.0f}/s | **{r['epoch2_ratio']:.2f}x** |"
        )
    lines += [
        "",
        "memory_budget = 10% of the data (or the smallest that works, where a chunk needs more); "
        f"accuracy of a Dense+BatchNorm model after {a['epochs']} epochs on a "
        f"balanced held-out set; full in-RAM shuffle: **{report['full_shuffle_accuracy']:.3f}**:",
        "",
        "| layout | budget | read units (x chunks) | held whole | reads per chunk | decode amplification | "
        "samples/s | every sample once | shards 2..units | accuracy | vs full shuffle |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in report["rows"]:
        b = r["budget_10pct"]
        gap = r["accuracy_10pct"] - report["full_shuffle_accuracy"]
        lines.append(
            f"| {r['layout']} | {r['budget_bytes'] / 2**20:.1f} MiB | {b['read_units']} ({b['x_chunks']}) | "
            f"{', '.join(b['held']) or '-'} | "
            f"{b['reads_per_chunk']} | {b['amplification']:.1f}x | {b['samples_per_s']:,.0f} | "
            f"{'yes' if b['exactly_once'] else 'NO'} | {'yes' if b['shards_partition'] else 'NO'} | "
            f"{r['accuracy_10pct']:.3f} | {gap:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for the accuracy column")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), metavar="LAYOUT")
    parser.add_argument("--work", default=str(HERE / "results" / "tmp"), help="where the stores are written")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--quick", action="store_true", help="smoke size: 4,000 samples, batches of 32, one epoch")
    args = parser.parse_args(argv)
    if args.quick:  # a 10% budget of 4,000 samples holds windows of ~130: batches of 32 fit them
        args.samples, args.epochs, args.batch_size = min(args.samples, 4000), 1, 32
    Path(args.work).mkdir(parents=True, exist_ok=True)
    # This VM writes memory a process touches for the first time at ~0.4-0.8 GB/s and reused memory at
    # ~7 GB/s; touch what the runs will use once, so the first layout is not measured against the host.
    warm = np.ones(4 * args.samples * 3080, np.uint8)
    del warm
    x, y = make_data(args.samples)
    test = make_data(max(2000, args.samples // 10), seed=1)
    order = np.random.default_rng(0).permutation(len(test[1]))
    test = (test[0][order], test[1][order])
    print(f"{args.samples:,} samples, {x.nbytes / 2**20:,.0f} MiB of images", flush=True)
    report: dict = {"args": vars(args), "rows": []}
    # Speed first, with TensorFlow not yet imported (its thread pools stay behind after a fit).
    for layout in args.layouts:
        report["rows"].append(measure_layout(args, layout, x, y))
    report["machine"] = machine()  # imports TensorFlow: after the speed measurements
    report["full_shuffle_accuracy"] = full_shuffle_accuracy(x, y, args.batch_size, args.epochs, test)
    print(f"  full in-RAM shuffle: accuracy {report['full_shuffle_accuracy']:.3f}", flush=True)
    for row in report["rows"]:
        path = store_path(args, row["layout"])
        row["accuracy_10pct"] = accuracy(path, args.batch_size, row["budget_bytes"], args.epochs, test)
        print(f"  {row['layout']}: accuracy at 10% {row['accuracy_10pct']:.3f}", flush=True)
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    tag = "layouts-quick" if args.quick else "layouts"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (out / f"{tag}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()

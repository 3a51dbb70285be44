"""daskfeed against what users would use instead: one store, one run, ratios to a raw read.

``python benchmarks/run.py`` makes an image-classification zarr store (32x32x3 uint8 images, int64 labels,
chunks of 1,024 samples; 3 GB at full size), measures every way of reading it in this process (medians of
repeats), and writes a markdown table, the same as JSON, and a PNG chart to ``benchmarks/results/``.
``--quick`` is the smoke size that CI runs. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import zarr

import daskfeed
from daskfeed.read import usable_cores

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from capped import run_capped  # noqa: E402  (beside this script, not a package)

RAW = "raw: zarr, chunks in order, 1 thread"
LIMIT = "limit: every chunk decoded with its zstd codec on every core, no loader"
SEQ_R1 = "daskfeed as_sequence, shuffled, reads_per_chunk=1"
DS_R1 = "daskfeed as_dataset, shuffled, reads_per_chunk=1"
FIT_RAM = "model.fit on numpy in RAM, tiny model"
FIT_SEQ = "model.fit through daskfeed as_sequence, reads_per_chunk=1"
FIT_DS = "model.fit through daskfeed as_dataset, reads_per_chunk=1"
#: What issue 12 asks of the committed full run: (what, measured key, comparison, bound).
TARGETS = [
    ("shuffled epoch through as_sequence (reads_per_chunk=1) / limit", "seq_over_limit", ">=", 0.85),
    ("shuffled epoch through as_dataset (reads_per_chunk=1) / limit", "ds_over_limit", ">=", 0.85),
    ("shuffled epoch through as_sequence / in-order 1-thread read", "seq_over_raw", ">=", 1.0),
    ("shuffled epoch through as_dataset / in-order 1-thread read", "ds_over_raw", ">=", 1.0),
    ("loader alone, taskset 2 cores / 1 core", "core_scaling", ">=", 1.7),
    ("model.fit through as_sequence / fit on numpy in RAM", "fit_seq_over_ram", ">=", 1.0),
    ("model.fit through as_dataset / fit on numpy in RAM", "fit_ds_over_ram", ">=", 1.0),
    ("overlap: both / max(step only, loader only)", "overlap", "<=", 1.15),
    ("remote (20 ms per request) / the same store local", "remote", ">=", 0.8),
    ("first batch at the default budget (s)", "first_batch_s", "<=", 0.3),
    # issue 21: the first epoch as fast as the rest
    ("first batch, a store that fits the default budget (s)", "first_batch_fits_s", "<=", 0.3),
    ("fresh loader's first epoch / in-order read, as_sequence, store that fits", "fresh_seq_fits", ">=", 1.0),
    ("fresh loader's first epoch / in-order read, as_dataset, store that fits", "fresh_ds_fits", ">=", 1.0),
    ("fresh loader's first epoch / in-order read, as_sequence, streamed store", "fresh_seq_streamed", ">=", 1.0),
    ("fresh loader's first epoch / in-order read, as_dataset, streamed store", "fresh_ds_streamed", ">=", 1.0),
    ("as_dataset in graph mode / Loader iterated in Python (reads_per_chunk=1)", "ds_over_loader", ">=", 0.9),
]
#: Samples of the store that fits the default budget in the fresh-loader measurement (600 MB decoded).
FRESH_FITS = 200_000


@dataclass
class Row:
    name: str
    samples_per_s: float
    mb_per_s: float
    ratio: float = 0.0
    peak_rss_mb: float | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)


class Bench:
    """Holds the store and the results; each ``measure`` call times a way of reading, repeats it, keeps medians."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rows: list[Row] = []
        self.extra: dict = {}
        root = zarr.open_group(args.store, mode="r")
        self.zx, self.zy = root["x"], root["y"]
        self.n = self.zx.shape[0]
        self.bytes_per_sample = 32 * 32 * 3 + 8
        self.batch = args.batch_size
        self.arrays = daskfeed.open_zarr(args.store)

    def measure(self, name: str, run, *, repeats: int | None = None, note: str = "", warmup: bool = False) -> Row:
        """``run()`` returns the samples it read; rate = samples / seconds, median over repeats."""
        if warmup:
            run()
        rates = []
        for _ in range(repeats or self.args.repeats):
            started = time.perf_counter()
            samples = run()
            rates.append(samples / (time.perf_counter() - started))
        rate = statistics.median(rates)
        row = Row(name, rate, rate * self.bytes_per_sample / 1e6, note=note, runs=rates)
        self.rows.append(row)
        print(f"  {name}: {rate:,.0f} samples/s", flush=True)
        return row

    def batches_for(self, slowest_rate: float) -> int:
        """How many batches to time for a slow way of reading: about ``--sample-seconds`` worth, at most an epoch."""
        per_batch = self.batch / slowest_rate
        return int(max(5, min(self.n // self.batch, self.args.sample_seconds / per_batch)))


def make_store(path: str, samples: int, chunk: int) -> None:
    """Images whose brightness follows a label (random order on disk), so a model has something to learn."""
    marker = Path(f"{path}.complete")  # beside the store: an interrupted write is never taken for a whole one
    if marker.exists() and zarr.open_group(path, mode="r")["x"].shape[0] == samples:
        return
    rng = np.random.default_rng(0)
    root = zarr.open_group(path, mode="w")
    x = root.create_array("x", shape=(samples, 32, 32, 3), chunks=(chunk, 32, 32, 3), dtype="u1")
    y = root.create_array("y", shape=(samples,), chunks=(chunk,), dtype="i8")
    step = chunk * 32
    for start in range(0, samples, step):
        stop = min(samples, start + step)
        labels = rng.integers(0, 10, stop - start)
        noise = rng.normal(0, 30, (stop - start, 32, 32, 3))
        x[start:stop] = np.clip(labels[:, None, None, None] * 20 + 30 + noise, 0, 255).astype("u1")
        y[start:stop] = labels
    marker.write_text("ok")


def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def fit_rate(model, data, epochs: int, **kwargs) -> float:
    """Samples per second of the last epoch of ``model.fit`` (the first one includes tracing)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.began

    clock = Clock()
    model.fit(data, epochs=epochs, verbose=0, callbacks=[clock], **kwargs)
    return clock.seconds


def run_all(bench: Bench) -> None:
    import tensorflow as tf

    from daskfeed.tf import dataset_from_loader

    args, n, bs = bench.args, bench.n, bench.batch
    zx, zy, arrays = bench.zx, bench.zy, bench.arrays
    chunk = zx.chunks[0]

    print("1. raw read", flush=True)

    def raw() -> int:
        for start in range(0, n, chunk):
            zx[start : start + chunk]
            zy[start : start + chunk]
        return n

    bench.measure(RAW, raw, warmup=True)
    print("1b. the limit: decoding on every core, no loader", flush=True)
    bench.measure(LIMIT, limit_read(bench), warmup=True, note=f"{usable_cores()} threads")

    print("2-5. hand-written loaders and xbatcher", flush=True)
    import keras

    class ZarrSlices(keras.utils.PyDataset):
        """What users write first: slice zarr per batch, in order."""

        def __len__(self):
            return -(-n // bs)

        def __getitem__(self, i):
            return zx[i * bs : (i + 1) * bs], zy[i * bs : (i + 1) * bs]

    class DaskSlices(ZarrSlices):
        def __getitem__(self, i):
            return arrays["x"][i * bs : (i + 1) * bs].compute(), arrays["y"][i * bs : (i + 1) * bs].compute()

    class ShuffledZarr(ZarrSlices):
        """A shuffled hand-written loader: random sample indices per batch, zarr orthogonal indexing."""

        order = np.random.default_rng(0).permutation(n)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * bs : (i + 1) * bs])
            return zx.get_orthogonal_selection((idx,)), zy.get_orthogonal_selection((idx,))

    def over(seq, count):
        def run():
            for i in range(count):
                seq[i]
            return min(n, count * bs)

        return run

    full = -(-n // bs)
    bench.measure("hand PyDataset slicing zarr per batch, in order", over(ZarrSlices(), full))
    count = bench.batches_for(13_000)
    bench.measure(
        "hand PyDataset, dask .compute() per batch, in order", over(DaskSlices(), count), note=f"{count} batches timed"
    )
    count = bench.batches_for(400)
    bench.measure(
        "hand PyDataset, shuffled (zarr orthogonal index)",
        over(ShuffledZarr(), count),
        repeats=1,
        note=f"{count} random batches timed, once",
    )
    import xarray as xr
    import xbatcher
    from xbatcher.loaders.keras import CustomTFDataset

    gx = xbatcher.BatchGenerator(
        xr.DataArray(arrays["x"], dims=("sample", "h", "w", "c")), input_dims={"sample": bs, "h": 32, "w": 32, "c": 3}
    )
    gy = xbatcher.BatchGenerator(xr.DataArray(arrays["y"], dims=("sample",)), input_dims={"sample": bs})
    count = bench.batches_for(10_000)
    bench.measure(
        f"xbatcher {xbatcher.__version__} Keras loader",
        over(CustomTFDataset(gx, gy), count),
        note=f"{count} batches timed",
    )

    print("6. in RAM", flush=True)
    x_np, y_np = zx[:], zy[:]
    in_ram = tf.data.Dataset.from_tensor_slices((x_np, y_np)).shuffle(10_000, seed=0).batch(bs)

    def count_batches(ds):
        """Consume ``ds`` in graph mode, as fit does, counting samples."""
        return ds.reduce(tf.constant(0, tf.int64), lambda c, b: c + tf.shape(b[1], out_type=tf.int64)[0])

    ram_counter = tf.function(lambda: count_batches(in_ram))
    bench.measure("in RAM: tf.data from_tensor_slices, shuffle 10k, batch", lambda: int(ram_counter()), warmup=True)

    print("7. daskfeed, iteration only", flush=True)
    for reads, label in ((1, "reads_per_chunk=1"), ("auto", "default")):
        kwargs = dict(batch_size=bs, memory_budget=args.memory_budget, reads_per_chunk=reads, seed=0)
        seq = daskfeed.as_sequence(arrays["x"], arrays["y"], **kwargs)

        def sequence_epoch(seq=seq) -> int:
            total = sum(len(seq[i][1]) for i in range(len(seq)))  # __getitem__ in order, as Keras calls it
            seq.on_epoch_end()
            return total

        started = time.perf_counter()
        sequence_epoch()
        first = n / (time.perf_counter() - started)
        r = seq.loader.reads_per_chunk
        bench.measure(
            f"daskfeed as_sequence, shuffled, {label}",
            sequence_epoch,
            note=f"reads_per_chunk={r}; epochs after the first; first epoch {first:,.0f}/s",
        )
        seq.close()
        # as_dataset, built from a Loader this script can close: a loader left open goes on prefetching its next
        # epoch, and would take CPU from the measurements after it.
        loader = daskfeed.Loader(arrays["x"], arrays["y"], **kwargs)
        ds = dataset_from_loader(loader)
        counter = tf.function(lambda ds=ds: count_batches(ds))
        started = time.perf_counter()
        int(counter())
        first = n / (time.perf_counter() - started)
        bench.measure(
            f"daskfeed as_dataset, shuffled, {label}",
            lambda counter=counter: int(counter()),
            note=f"reads_per_chunk={r}; graph mode (Dataset.reduce); first epoch {first:,.0f}/s",
        )
        loader.close()

    print("8. model.fit end to end", flush=True)
    epochs = 2
    seconds = [fit_rate(tiny_model(), x_np, epochs, y=y_np, batch_size=bs, shuffle=True) for _ in range(args.repeats)]
    bench.rows.append(_row(FIT_RAM, n, seconds, bench))
    seq = daskfeed.as_sequence(
        arrays["x"], arrays["y"], batch_size=bs, memory_budget=args.memory_budget, reads_per_chunk=1, seed=0
    )
    seconds = [fit_rate(tiny_model(), seq, epochs, shuffle=False) for _ in range(args.repeats)]
    bench.rows.append(_row(FIT_SEQ, n, seconds, bench))
    seq.close()
    loader = daskfeed.Loader(
        arrays["x"], arrays["y"], batch_size=bs, memory_budget=args.memory_budget, reads_per_chunk=1, seed=0
    )
    seconds = [fit_rate(tiny_model(), dataset_from_loader(loader), epochs) for _ in range(args.repeats)]
    bench.rows.append(_row(FIT_DS, n, seconds, bench))
    loader.close()
    for row in bench.rows[-3:]:
        print(f"  {row.name}: {row.samples_per_s:,.0f} samples/s", flush=True)
    del x_np, y_np
    ram_counter = in_ram = None  # let the in-RAM copies go before the next measurements

    print("9. overlap with a training step", flush=True)
    bench.extra["overlap"] = overlap(bench)
    print(f"  {bench.extra['overlap']}", flush=True)
    print("10. a store 20 ms away", flush=True)
    bench.extra["remote"] = remote(bench)
    print(f"  {bench.extra['remote']}", flush=True)
    print("11. first batch", flush=True)
    bench.extra["first_batch"] = first_batch(bench)
    print(f"  {bench.extra['first_batch']}", flush=True)


def limit_read(bench: Bench):
    """Every chunk of x and y read from its file and zstd-decoded (numcodecs, the codec the store was written
    with) straight into one preallocated array per array, on one thread per usable core: what decoding alone
    can do on this machine."""
    from concurrent.futures import ThreadPoolExecutor

    import numcodecs

    arrays = [bench.zx, bench.zy]
    for z in arrays:
        names = [type(c).__name__ for c in z.metadata.codecs]
        assert names == ["BytesCodec", "ZstdCodec"], f"the limit reads zstd chunks; {z.path} has {names}"
    outs = [np.empty(z.shape, z.dtype) for z in arrays]
    root = Path(bench.args.store)
    jobs = [
        (z, out, i, root / z.path / z.metadata.encode_chunk_key((i,) + (0,) * (z.ndim - 1)))
        for z, out in zip(arrays, outs)
        for i in range(-(-z.shape[0] // z.chunks[0]))
    ]
    codec = numcodecs.Zstd()

    def one(job) -> None:
        z, out, i, path = job
        step = z.chunks[0]
        raw = path.read_bytes()
        if (i + 1) * step <= z.shape[0]:
            codec.decode(raw, out=out[i * step : (i + 1) * step])
        else:  # the last chunk is stored whole
            full = np.frombuffer(codec.decode(raw), z.dtype).reshape(z.chunks)
            out[i * step :] = full[: z.shape[0] - i * step]

    def run() -> int:
        with ThreadPoolExecutor(usable_cores()) as pool:
            list(pool.map(one, jobs))
        return bench.n

    return run


class LatencyStore(zarr.storage.WrapperStore):
    """A local store whose every chunk request first waits ``delay`` seconds, as a remote object store does."""

    def __init__(self, store, delay: float = 0.02):
        super().__init__(store)
        self.delay = delay

    def _with_store(self, store):
        return type(self)(store, self.delay)

    async def get(self, key, prototype, byte_range=None):
        import asyncio

        if "/c/" in key:
            await asyncio.sleep(self.delay)
        return await self._store.get(key, prototype, byte_range)


def later_epoch_rate(arrays: dict, bench: Bench, repeats: int) -> float:
    """Samples/s of the loader alone (reads_per_chunk=1) over epochs after a first, warm one; median."""
    rates = []
    with daskfeed.Loader(
        arrays["x"], arrays["y"], batch_size=bench.batch, memory_budget=bench.args.memory_budget, reads_per_chunk=1
    ) as loader:
        for _ in loader:
            pass
        for _ in range(repeats):
            started = time.perf_counter()
            samples = sum(len(b[1]) for b in loader)
            rates.append(samples / (time.perf_counter() - started))
    return statistics.median(rates)


def remote(bench: Bench) -> dict:
    """The same store read locally and through a store that waits 20 ms per chunk request."""
    local = later_epoch_rate(bench.arrays, bench, bench.args.repeats)
    store = LatencyStore(zarr.storage.LocalStore(bench.args.store, read_only=True), 0.02)
    slow = daskfeed.open_zarr(zarr.open_group(store, mode="r"))
    delayed = later_epoch_rate(slow, bench, bench.args.repeats)
    return {"delay_ms": 20, "local_samples_per_s": local, "remote_samples_per_s": delayed, "ratio": delayed / local}


def first_batch(bench: Bench) -> dict:
    """Seconds from ``as_sequence(...)`` at its defaults to its first batch, for fresh loaders; median."""
    runs = []
    for _ in range(max(3, bench.args.repeats)):
        started = time.perf_counter()
        seq = daskfeed.as_sequence(bench.arrays["x"], bench.arrays["y"], batch_size=bench.batch, seed=0)
        seq[0]
        runs.append(time.perf_counter() - started)
        seq.close()
    return {"seconds": statistics.median(runs), "runs": runs}


def fresh(bench: Bench) -> dict:
    """A new loader per epoch, as short runs, sweeps and ``predict`` make one: samples/s of the whole first epoch
    from the call that makes the loader, through both doors at the default budget, and seconds to the first
    batch; on a store that fits the default budget (:data:`FRESH_FITS` samples, served while it is decoded) and
    on the main store (streamed at the default budget). Each against zarr's in-order one-thread read of the same
    store in this process; medians."""
    import tensorflow as tf

    store = Path(bench.args.store)
    fits = str(store.with_name(f"fits-{min(FRESH_FITS, bench.n)}.zarr"))
    make_store(fits, min(FRESH_FITS, bench.n), bench.args.chunk)
    out = {}
    for case, path in (("fits", fits), ("streamed", str(store))):
        root = zarr.open_group(path, mode="r")
        zx, zy = root["x"], root["y"]
        n, chunk, bs = zx.shape[0], zx.chunks[0], bench.batch
        arrays = daskfeed.open_zarr(path)

        def raw(zx=zx, zy=zy, n=n, chunk=chunk) -> float:
            started = time.perf_counter()
            for start in range(0, n, chunk):
                zx[start : start + chunk]
                zy[start : start + chunk]
            return n / (time.perf_counter() - started)

        raw()
        rates: dict[str, list[float]] = {"raw": [], "seq": [], "ds": [], "first": []}
        for repeat in range(bench.args.repeats):
            rates["raw"].append(raw())
            started = time.perf_counter()
            seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=bs, seed=repeat)
            served = sum(len(seq[i][1]) for i in range(len(seq)))
            rates["seq"].append(served / (time.perf_counter() - started))
            seq.close()
            started = time.perf_counter()
            ds = daskfeed.as_dataset(arrays["x"], arrays["y"], batch_size=bs, seed=repeat)
            served = int(ds.reduce(tf.constant(0, tf.int64), lambda c, b: c + tf.shape(b[1], out_type=tf.int64)[0]))
            rates["ds"].append(served / (time.perf_counter() - started))
            ds.loader.close()
            started = time.perf_counter()
            seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=bs, seed=repeat)
            seq[0]
            rates["first"].append(time.perf_counter() - started)
            seq.close()
        med = {k: statistics.median(v) for k, v in rates.items()}
        out[case] = {
            "samples": n,
            "raw": med["raw"],
            "seq": med["seq"],
            "ds": med["ds"],
            "seq_over_raw": med["seq"] / med["raw"],
            "ds_over_raw": med["ds"] / med["raw"],
            "first_batch_s": med["first"],
            "first_batch_runs": rates["first"],
            "runs": rates,
        }
    return out


def scaling(args: argparse.Namespace) -> dict:
    """The loader alone in fresh processes pinned to 1 core and to 2 (``taskset``)."""
    import shutil

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if shutil.which("taskset") is None or len(cores) < 2:
        return {"ran": False, "why_not": "needs taskset and 2 usable cores"}
    out = {"ran": True}
    for label, pin in (("one", str(cores[0])), ("two", f"{cores[0]},{cores[1]}")):
        command = ["taskset", "-c", pin, sys.executable, __file__, "--child-rate", "--store", args.store]
        command += ["--memory-budget", args.memory_budget, "--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return {"ran": False, "why_not": f"exit {result.returncode}: {result.stderr[-400:]}"}
        out[label] = json.loads(result.stdout.strip().splitlines()[-1])["samples_per_s"]
    out["ratio"] = out["two"] / out["one"]
    return out


def child_rate(args: argparse.Namespace) -> None:
    bench = Bench(args)
    print(json.dumps({"samples_per_s": later_epoch_rate(bench.arrays, bench, args.repeats)}))


def _row(name: str, n: int, seconds: list[float], bench: Bench) -> Row:
    rates = [n / s for s in seconds]
    rate = statistics.median(rates)
    return Row(name, rate, rate * bench.bytes_per_sample / 1e6, note="last of 2 epochs", runs=rates)


def overlap(bench: Bench) -> dict:
    """A step that releases the GIL (sleep) for as long, per batch, as the loader takes: the hardest case."""
    args = bench.args
    loader = daskfeed.Loader(
        bench.arrays["x"],
        bench.arrays["y"],
        batch_size=bench.batch,
        memory_budget=args.memory_budget,
        reads_per_chunk=1,
        seed=0,
    )
    for _ in loader:  # warm: the next epoch's first window is prefetched, as in training
        pass
    started = time.perf_counter()
    for _ in loader:
        pass
    loader_only = time.perf_counter() - started
    step = loader_only / len(loader)
    started = time.perf_counter()
    for _ in range(len(loader)):
        time.sleep(step)
    step_only = time.perf_counter() - started
    started = time.perf_counter()
    for _ in loader:
        time.sleep(step)
    both = time.perf_counter() - started
    loader.close()
    return {
        "step_ms": step * 1e3,
        "loader_only_s": loader_only,
        "step_only_s": step_only,
        "both_s": both,
        "ratio_to_max": both / max(step_only, loader_only),
    }


def memory(args: argparse.Namespace) -> dict:
    """Peak RSS of a daskfeed epoch over its baseline, in a fresh process; and an epoch in a memory-capped cgroup."""
    out = {"budget_mb": daskfeed.parse_bytes(args.memory_budget) / 1e6}
    out.update(child(args, args.memory_budget))
    out["larger_than_memory"] = capped_epoch(args)
    return out


def child(args: argparse.Namespace, budget: str) -> dict:
    command = [sys.executable, __file__, "--child-epoch", "--store", args.store, "--memory-budget", budget]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"ran": False, "why_not": f"exit {result.returncode}: {result.stderr[-400:]}"}
    return {"ran": True, **json.loads(result.stdout.strip().splitlines()[-1])}


def capped_epoch(args: argparse.Namespace) -> dict:
    """One epoch in a cgroup whose memory limit is a third of the decoded data, where the machine allows it."""
    decoded_mb = sum(a.nbytes for a in daskfeed.open_zarr(args.store).values()) / 1e6
    limit_mb = decoded_mb / 3
    budget_mb = min(daskfeed.parse_bytes(args.memory_budget) / 1e6, limit_mb / 4)
    info = {"decoded_mb": decoded_mb, "limit_mb": limit_mb, "budget_mb": budget_mb}
    if limit_mb < 600:
        info["ran"] = False
        info["why_not"] = (
            f"the store ({decoded_mb:.0f} MB decoded) is too small to cap the process below it (Python with dask "
            "and zarr alone takes ~150 MB); the full size runs it"
        )
        return info
    command = [sys.executable, __file__, "--child-epoch", "--store", args.store]
    capped = run_capped([*command, "--memory-budget", str(int(budget_mb * 1e6))], int(limit_mb * 1e6))
    if not capped["ran"]:
        return {**info, **capped}
    if capped["returncode"] != 0:
        return {**info, "ran": False, "why_not": f"exit {capped['returncode']}: {capped['stderr'][-400:]}"}
    info.update(ran=True, **json.loads(capped["stdout"].strip().splitlines()[-1]))
    info.update(cgroup_peak_mb=capped["cgroup_peak_mb"], oom_kills=capped["oom_kills"])
    return info


def child_epoch(args: argparse.Namespace) -> None:
    """Run in a fresh process: one shuffled epoch, sampling RSS; print JSON."""
    import psutil

    proc = psutil.Process()
    arrays = daskfeed.open_zarr(args.store)
    loader = daskfeed.Loader(
        arrays["x"],
        arrays["y"],
        batch_size=args.batch_size,
        memory_budget=args.memory_budget,
        reads_per_chunk=1,
        seed=0,
    )
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    samples = sum(len(b[1]) for b in loader)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    stats = loader.stats
    loader.close()
    print(
        json.dumps(
            {
                "samples": samples,
                "samples_per_s": samples / seconds,
                "baseline_rss_mb": baseline / 1e6,
                "peak_rss_mb": peak[0] / 1e6,
                "peak_over_baseline_mb": (peak[0] - baseline) / 1e6,
                "peak_window_mb": stats["peak_window_bytes"] / 1e6,
            }
        )
    )


def machine() -> dict:
    import dask
    import keras
    import psutil
    import tensorflow as tf

    return {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "daskfeed": daskfeed.__version__,
        "platform": platform.platform(),
    }


def targets(bench: Bench) -> list[dict]:
    """Each of :data:`TARGETS` with its measured figure and whether it is met (None: not measured)."""
    rate = {r.name: r.samples_per_s for r in bench.rows}
    extra = bench.extra
    measured = {
        "seq_over_limit": rate[SEQ_R1] / rate[LIMIT],
        "ds_over_limit": rate[DS_R1] / rate[LIMIT],
        "seq_over_raw": rate[SEQ_R1] / rate[RAW],
        "ds_over_raw": rate[DS_R1] / rate[RAW],
        "core_scaling": extra.get("scaling", {}).get("ratio"),
        "fit_seq_over_ram": rate[FIT_SEQ] / rate[FIT_RAM],
        "fit_ds_over_ram": rate[FIT_DS] / rate[FIT_RAM],
        "overlap": extra.get("overlap", {}).get("ratio_to_max"),
        "remote": extra.get("remote", {}).get("ratio"),
        "first_batch_s": extra.get("first_batch", {}).get("seconds"),
        "first_batch_fits_s": extra.get("fresh", {}).get("fits", {}).get("first_batch_s"),
        "ds_over_loader": rate[DS_R1] / extra["remote"]["local_samples_per_s"] if "remote" in extra else None,
    }
    for case in ("fits", "streamed"):
        got = extra.get("fresh", {}).get(case, {})
        for door in ("seq", "ds"):
            measured[f"fresh_{door}_{case}"] = got.get(f"{door}_over_raw")
    out = []
    for what, key, op, bound in TARGETS:
        value = measured[key]
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": what, "key": key, "measured": value, "bound": f"{op} {bound}", "met": met})
    return out


def write(bench: Bench, out: Path, tag: str) -> dict:
    raw = next(r for r in bench.rows if r.name == RAW).samples_per_s
    for row in bench.rows:
        row.ratio = row.samples_per_s / raw
    bench.extra["targets"] = targets(bench)
    report = {
        "machine": machine(),
        "store": {
            "samples": bench.n,
            "chunk": bench.zx.chunks[0],
            "batch_size": bench.batch,
            "memory_budget": bench.args.memory_budget,
            "repeats": bench.args.repeats,
        },
        "rows": [asdict(r) for r in bench.rows],
        **bench.extra,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# daskfeed benchmark ({tag})",
        "",
        f"{bench.n:,} samples of 32x32x3 uint8 + int64 label, zarr chunks of {bench.zx.chunks[0]}, "
        f"batch {bench.batch}, memory_budget {bench.args.memory_budget}, median of {bench.args.repeats}. "
        + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        "| way of reading | samples/s | MB/s | ratio to raw | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in bench.rows:
        lines.append(f"| {r.name} | {r.samples_per_s:,.0f} | {r.mb_per_s:,.0f} | {r.ratio:.2f} | {r.note} |")
    if "overlap" in bench.extra:
        o = bench.extra["overlap"]
        lines += [
            "",
            f"Overlap: a step of {o['step_ms']:.2f} ms per batch that releases the GIL; loader alone "
            f"{o['loader_only_s']:.2f} s, step alone {o['step_only_s']:.2f} s, both {o['both_s']:.2f} s: "
            f"**{o['ratio_to_max']:.2f}x** max(step, loader).",
        ]
    lines += ["", "Targets (issue 12), from this run:", "", "| target | measured | bound | met |"]
    lines.append("|---|---:|---:|---|")
    for t in bench.extra["targets"]:
        value = "not measured" if t["measured"] is None else f"{t['measured']:.2f}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {value} | {t['bound']} | {met} |")
    r, sc = bench.extra["remote"], bench.extra["scaling"]
    lines += [
        "",
        f"Remote: {r['remote_samples_per_s']:,.0f} samples/s with {r['delay_ms']} ms per chunk request, "
        f"{r['local_samples_per_s']:,.0f} samples/s locally. First batch: "
        + ", ".join(f"{s:.2f}" for s in bench.extra["first_batch"]["runs"])
        + " s. Core scaling: "
        + (
            f"{sc['one']:,.0f} samples/s on 1 core, {sc['two']:,.0f} on 2."
            if sc.get("ran")
            else f"not measured ({sc['why_not']})."
        ),
    ]
    for case, f in bench.extra.get("fresh", {}).items():
        lines += [
            "",
            f"Fresh loaders, {case} ({f['samples']:,} samples, default budget; a new loader per epoch, timed from "
            f"the call that makes it): in-order read {f['raw']:,.0f} samples/s; as_sequence {f['seq']:,.0f} "
            f"({f['seq_over_raw']:.2f}x), as_dataset {f['ds']:,.0f} ({f['ds_over_raw']:.2f}x); first batch "
            + ", ".join(f"{s:.2f}" for s in f["first_batch_runs"])
            + " s.",
        ]
    if "memory" in bench.extra:
        m = bench.extra["memory"]
        if m.get("ran"):
            lines += [
                "",
                f"Memory (fresh process, one epoch): RSS {m['baseline_rss_mb']:.0f} MB before, peak "
                f"{m['peak_rss_mb']:.0f} MB, **+{m['peak_over_baseline_mb']:.0f} MB** for a budget of "
                f"{m['budget_mb']:.0f} MB (windows held at most {m['peak_window_mb']:.0f} MB).",
            ]
        else:
            lines += ["", f"Memory: the measuring process failed. {m.get('why_not', '')}"]
        c = m["larger_than_memory"]
        if c.get("ran"):
            lines.append(
                f"Larger than memory: one epoch over {c['decoded_mb']:.0f} MB of decoded data, with memory_budget "
                f"{c['budget_mb']:.0f} MB, in a cgroup capped at {c['limit_mb']:.0f} MB (page cache included) "
                f"completed: {c['samples']:,} samples, {c['samples_per_s']:,.0f} samples/s, peak RSS "
                f"{c['peak_rss_mb']:.0f} MB, cgroup peak {c['cgroup_peak_mb']:.0f} MB, {c['oom_kills']} OOM kills."
            )
        else:
            lines.append(f"Larger than memory: did not run or did not complete. {c.get('why_not', '')}")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    chart(bench, out / f"{tag}.png")
    print("\n".join(lines))
    return report


def chart(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(bench.rows, key=lambda r: r.samples_per_s)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    colors = ["tab:blue" if r.name.startswith("daskfeed") or "through daskfeed" in r.name else "tab:gray" for r in rows]
    ax.barh([r.name for r in rows], [r.samples_per_s for r in rows], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("samples/s (log scale); blue: daskfeed")
    ax.set_title(f"{bench.n:,} samples, 32x32x3 uint8, chunks of {bench.zx.chunks[0]}, batch {bench.batch}")
    for i, r in enumerate(rows):
        ax.text(r.samples_per_s, i, f" {r.ratio:.2f}x raw", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(HERE / "results" / "tmp" / "bench.zarr"))
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="time spent on each slow baseline")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quick", action="store_true", help="smoke size: 20,000 samples, one repeat")
    parser.add_argument("--child-epoch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-rate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_epoch:
        child_epoch(args)
        return {}
    if args.child_rate:
        child_rate(args)
        return {}
    tag = "full"
    if args.quick:
        args.samples, args.repeats, args.sample_seconds, args.memory_budget, tag = 20_000, 1, 0.5, "64MB", "quick"
    make_store(args.store, args.samples, args.chunk)
    bench = Bench(args)
    run_all(bench)
    print("11b. fresh loaders, first epoch and first batch", flush=True)
    bench.extra["fresh"] = fresh(bench)
    print(f"  {bench.extra['fresh']}", flush=True)
    print("12. core scaling", flush=True)
    bench.extra["scaling"] = scaling(args)
    print(f"  {bench.extra['scaling']}", flush=True)
    print("13. memory", flush=True)
    bench.extra["memory"] = memory(args)
    return write(bench, Path(args.out), tag)


if __name__ == "__main__":
    main()

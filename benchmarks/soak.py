"""Soak: many epochs through each door, with the process's RSS and thread count after every epoch.

``python benchmarks/soak.py`` runs 50 epochs through ``as_sequence`` (read as Keras reads it) and 50 through
``as_dataset`` (consumed in graph mode) over one store streamed in windows (a budget of 1/4 of the data), then
makes 20 loaders one after another (each door in turn), iterates an epoch of each and drops it; and writes
``results/soak[-quick].md`` and ``.json``: RSS and threads per epoch and per dropped loader, and the growth
fitted over the epochs after the first five (over the loaders after the first three). Flat is the target: a
dropped loader frees its windows. ``--quick`` is the smoke size the tests run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import psutil
import zarr

import daskfeed

HERE = Path(__file__).resolve().parent


def make_store(path: str, n: int) -> None:
    rng = np.random.default_rng(0)
    group = zarr.open_group(path, mode="w")
    group.create_array("x", data=rng.integers(0, 256, (n, 32, 32, 3), dtype="u1"), chunks=(1000, 32, 32, 3))
    group.create_array("y", data=rng.integers(0, 10, n), chunks=(1000,))


def sample(process: psutil.Process) -> dict:
    gc.collect()
    return {"rss_mb": process.memory_info().rss / 2**20, "threads": threading.active_count()}


def soak_sequence(arrays: dict, epochs: int, budget: int) -> list[dict]:
    process, rows = psutil.Process(), []
    seq = daskfeed.as_sequence(arrays["x"], arrays["y"], batch_size=128, seed=0, memory_budget=budget)
    for _ in range(epochs):
        started = time.perf_counter()
        seq.on_epoch_begin()
        for i in range(len(seq)):
            seq[i]
        seq.on_epoch_end()
        rows.append({"seconds": time.perf_counter() - started, **sample(process)})
    seq.close()
    return rows


def soak_dataset(arrays: dict, epochs: int, budget: int) -> list[dict]:
    import tensorflow as tf

    from daskfeed.tf import dataset_from_loader

    process, rows = psutil.Process(), []
    with daskfeed.Loader(arrays["x"], arrays["y"], batch_size=128, seed=0, memory_budget=budget) as loader:
        ds = dataset_from_loader(loader)
        count = tf.function(lambda: ds.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b[1], tf.int64)[0]))
        for _ in range(epochs):
            started = time.perf_counter()
            count()
            rows.append({"seconds": time.perf_counter() - started, **sample(process)})
    return rows


def soak_dropped(arrays: dict, loaders: int, budget: int) -> list[dict]:
    """Make, iterate for an epoch and drop ``loaders`` loaders, each door in turn, never closing one."""
    import tensorflow as tf

    process, rows, made = psutil.Process(), [], []
    kwargs = dict(batch_size=128, seed=0, memory_budget=budget)
    for k in range(loaders):
        started = time.perf_counter()
        door = ("Loader", "as_sequence", "as_dataset")[k % 3]
        if door == "Loader":
            loader = daskfeed.Loader(arrays["x"], arrays["y"], **kwargs)
            made.append(weakref.ref(loader))
            for _ in loader:
                pass
        elif door == "as_sequence":
            loader = daskfeed.as_sequence(arrays["x"], arrays["y"], **kwargs)
            made.append(weakref.ref(loader.loader))
            for i in range(len(loader)):
                loader[i]
        else:
            loader = daskfeed.as_dataset(arrays["x"], arrays["y"], **kwargs)
            made.append(weakref.ref(loader.loader))
            loader.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b[1], tf.int64)[0])
        del loader
        rows.append({"door": door, "seconds": time.perf_counter() - started, **sample(process)})
    rows[-1]["loaders_alive"] = sum(ref() is not None for ref in made)  # of those made here
    return rows


def growth(rows: list[dict], key: str, skip: int = 5) -> float:
    """Least-squares slope of ``key`` over the epochs after the first ``skip``: per epoch."""
    values = [r[key] for r in rows[skip:]] or [r[key] for r in rows]
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--store", default=str(HERE / "results" / "tmp" / "soak.zarr"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--loaders", type=int, default=20, help="loaders made and dropped one after another")
    parser.add_argument("--quick", action="store_true", help="smoke size: 4,000 samples, 6 epochs, 6 loaders")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.loaders = min(args.samples, 4000), min(args.epochs, 6), min(args.loaders, 6)
    make_store(args.store, args.samples)
    arrays = daskfeed.open_zarr(args.store)
    budget = args.samples * (32 * 32 * 3 + 8) // 4
    report = {"args": vars(args), "budget": budget, "doors": {}}
    for door, run in (("as_sequence", soak_sequence), ("as_dataset", soak_dataset)):
        rows = run(arrays, args.epochs, budget)
        report["doors"][door] = {
            "epochs": rows,
            "rss_growth_mb_per_epoch": growth(rows, "rss_mb"),
            "thread_growth_per_epoch": growth(rows, "threads"),
        }
        print(
            f"  {door}: RSS {rows[0]['rss_mb']:.0f} MB after epoch 1, {rows[-1]['rss_mb']:.0f} MB after epoch "
            f"{len(rows)} ({report['doors'][door]['rss_growth_mb_per_epoch']:+.2f} MB/epoch), threads "
            f"{rows[0]['threads']} -> {rows[-1]['threads']}",
            flush=True,
        )
    rows = soak_dropped(arrays, args.loaders, budget)
    report["dropped"] = {
        "loaders": rows,
        "rss_growth_mb_per_loader": growth(rows, "rss_mb", skip=3),
        "loaders_alive_at_end": rows[-1]["loaders_alive"],
    }
    print(
        f"  {len(rows)} dropped loaders: RSS {rows[0]['rss_mb']:.0f} MB after the first, {rows[-1]['rss_mb']:.0f} MB "
        f"after the last ({report['dropped']['rss_growth_mb_per_loader']:+.2f} MB/loader), "
        f"{rows[-1]['loaders_alive']} loaders alive at the end",
        flush=True,
    )
    lines = [
        f"{args.samples:,} samples of 32x32x3 uint8 + int64 labels, chunks of 1,000, memory_budget "
        f"{budget / 2**20:.1f} MiB (1/4 of the data: streamed in windows), batch 128, {args.epochs} epochs per door.",
        "",
        "| door | RSS after epoch 1 | RSS after the last | max RSS | RSS growth per epoch (after 5) "
        "| threads first/last/max |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for door, d in report["doors"].items():
        rows = d["epochs"]
        lines.append(
            f"| {door} | {rows[0]['rss_mb']:.0f} MB | {rows[-1]['rss_mb']:.0f} MB | "
            f"{max(r['rss_mb'] for r in rows):.0f} MB | {d['rss_growth_mb_per_epoch']:+.2f} MB | "
            f"{rows[0]['threads']}/{rows[-1]['threads']}/{max(r['threads'] for r in rows)} |"
        )
    d = report["dropped"]
    rows = d["loaders"]
    lines += [
        "",
        f"{len(rows)} loaders made one after another (Loader, as_sequence, as_dataset in turn), each iterated for an "
        "epoch and dropped without close():",
        "",
        "| RSS after the first | RSS after the last | max RSS | RSS growth per loader (after 3) | loaders alive at the "
        "end | threads first/last |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {rows[0]['rss_mb']:.0f} MB | {rows[-1]['rss_mb']:.0f} MB | {max(r['rss_mb'] for r in rows):.0f} MB | "
        f"{d['rss_growth_mb_per_loader']:+.2f} MB | {d['loaders_alive_at_end']} | "
        f"{rows[0]['threads']}/{rows[-1]['threads']} |",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "soak-quick" if args.quick else "soak"
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2))
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)

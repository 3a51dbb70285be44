"""Forecasting a series stored in zarr: windows of past steps as samples (``window=``), a seeded validation split.

A (time, features) float32 series is written with ``zarr.create_array`` in chunks of a thousand steps, as a
sensor or climate export would be. The model sees the last ``--length`` steps and predicts feature 0 one step
ahead. As with ``keras.utils.timeseries_dataset_from_array``, ``y`` is taken at the window's first step, so the
targets are shifted by hand when the store is written: ``x = series[:-L]``, ``y = series[L:, 0]``. Windows are
read once per chunk (those that cross a chunk boundary too); ``daskfeed.split`` keeps a seeded tenth of them
for validation, and a ``transform=`` adds a little noise to each training batch, new each epoch.

Run ``python examples/forecast.py``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import daskfeed


def make_series(n: int, features: int, seed: int = 0) -> np.ndarray:
    """Sums of seeded sines with noise: feature 0 follows from the recent past of all of them."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    periods = rng.uniform(20, 200, size=(1, features))
    series = np.sin(2 * np.pi * t / periods + rng.uniform(0, 6, size=(1, features)))
    series[:, 0] = series[:, 1:].mean(axis=1) + 0.5 * np.sin(2 * np.pi * t[:, 0] / 50)
    return (series + 0.05 * rng.normal(size=series.shape)).astype("f4")


def jitter(batch, rng):
    """Training-time augmentation on daskfeed's threads: Gaussian noise, drawn anew every epoch."""
    x, y = batch
    return x + rng.normal(scale=0.02, size=x.shape).astype(x.dtype), y


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="forecast-example.zarr")
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1000, help="steps per zarr chunk")
    parser.add_argument("--length", type=int, default=48, help="steps per window")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory-budget", default="400KB", help="smaller than the series: windows stream")
    args = parser.parse_args(argv)

    import keras
    import zarr

    length = args.length
    series = make_series(args.steps, args.features)
    # The target of the window that starts at i is the step after it: y[i] = series[i + L, 0]. Written as arrays
    # of their own at export time (slicing the stored series with dask, stored[:-L], would lose the fast read).
    group = zarr.open_group(args.store, mode="w")
    group.create_array("x", data=series[:-length], chunks=(args.chunk, args.features))
    group.create_array("y", data=series[length:, 0], chunks=(args.chunk,))
    stored = daskfeed.open_zarr(args.store)
    x, y = stored["x"], stored["y"]

    train, val = daskfeed.split((x, y), [0.9, 0.1], seed=0)
    knobs = dict(batch_size=128, window={0: length}, stride={0: 2}, memory_budget=args.memory_budget, seed=0)
    train_seq = daskfeed.as_sequence(train, transform=jitter, **knobs)
    val_seq = daskfeed.as_sequence(val, **{**knobs, "shuffle": False})
    print(train_seq.loader)

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((length, args.features)),
            keras.layers.Conv1D(16, 5, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "mse")
    baseline = float(np.var(series[length:, 0]))  # the error of predicting the mean
    started = time.perf_counter()
    history = model.fit(train_seq, validation_data=val_seq, epochs=args.epochs, shuffle=False, verbose=2)
    seconds = time.perf_counter() - started
    val_mse = float(history.history["val_loss"][-1])
    windows = train_seq.loader.n_samples * args.epochs
    print(f"validation mse {val_mse:.4f} against {baseline:.4f} for the mean; {windows / seconds:,.0f} windows/s")
    result = {
        "val_mse": val_mse,
        "baseline_mse": baseline,
        "train_windows": train_seq.loader.n_samples,
        "val_windows": val_seq.loader.n_samples,
        "amplification": train_seq.loader.layout.amplification,
        "resident": train_seq.loader.layout.resident,
    }
    train_seq.close()
    val_seq.close()
    return result


if __name__ == "__main__":
    main()

"""A two-input Keras model fed from a dict of zarr arrays, with per-sample weights, through as_dataset.

Each sample is a small single-channel image and a vector of four measurements; the label needs both (the
class is the brightest quadrant of the image, shifted by the sign of the first measurement). One class in ten
is rare, and its samples get a weight of 5 so the model does not ignore it. The dict keys of ``x`` are the
names of the model's inputs.

Run ``python examples/multi_input.py`` (``--samples`` to change the size).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import zarr

import daskfeed

CLASSES = 4


def write_store(path: str, samples: int, chunk: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root = zarr.open_group(path, mode="w")
    image = root.create_array("image", shape=(samples, 16, 16, 1), chunks=(chunk, 16, 16, 1), dtype="f4")
    meta = root.create_array("meta", shape=(samples, 4), chunks=(chunk, 4), dtype="f4")
    label = root.create_array("label", shape=(samples,), chunks=(chunk,), dtype="i8")
    weight = root.create_array("weight", shape=(samples,), chunks=(chunk,), dtype="f4")
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        quadrant = rng.choice(CLASSES, n, p=[0.1, 0.3, 0.3, 0.3])  # quadrant 0 is the rare one
        pictures = rng.normal(0, 1, (n, 16, 16, 1)).astype("f4")
        rows, cols = (quadrant // 2) * 8, (quadrant % 2) * 8
        for i in range(n):
            pictures[i, rows[i] : rows[i] + 8, cols[i] : cols[i] + 8] += 1.5
        measurements = rng.normal(0, 1, (n, 4)).astype("f4")
        y = (quadrant + (measurements[:, 0] > 0)) % CLASSES
        image[start : start + n] = pictures
        meta[start : start + n] = measurements
        label[start : start + n] = y
        weight[start : start + n] = np.where(y == 0, 5.0, 1.0)


def build_model():
    import keras

    image = keras.Input((16, 16, 1), name="image")
    meta = keras.Input((4,), name="meta")
    a = keras.layers.Conv2D(8, 3, activation="relu")(image)
    a = keras.layers.MaxPooling2D()(a)
    a = keras.layers.Flatten()(a)
    b = keras.layers.Dense(16, activation="relu")(meta)
    h = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([a, b]))
    out = keras.layers.Dense(CLASSES, activation="softmax")(h)
    model = keras.Model({"image": image, "meta": meta}, out)
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", weighted_metrics=["accuracy"], metrics=[]
    )
    return model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="multi_input.zarr")
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory-budget", default="64MB")
    args = parser.parse_args(argv)

    import keras

    write_store(args.store, args.samples, args.chunk)
    arrays = daskfeed.open_zarr(args.store)
    split = int(0.8 * args.samples) // args.chunk * args.chunk  # train on whole chunks, hold out the rest

    def part(lo, hi):
        x = {"image": arrays["image"][lo:hi], "meta": arrays["meta"][lo:hi]}
        return x, arrays["label"][lo:hi], arrays["weight"][lo:hi]

    x, y, w = part(0, split)
    train = daskfeed.as_dataset(x, y, w, batch_size=128, seed=0, memory_budget=args.memory_budget)
    keras.utils.set_random_seed(0)
    model = build_model()
    started = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, verbose=2, shuffle=False)  # daskfeed shuffles the samples
    rate = split * args.epochs / (time.perf_counter() - started)

    x, y, w = part(split, args.samples)
    test = daskfeed.as_dataset(x, y, w, batch_size=512, shuffle=False)
    _loss, weighted_accuracy = model.evaluate(test, verbose=0)
    labels = y.compute()
    predicted = model.predict(daskfeed.as_dataset(x, batch_size=512, shuffle=False), verbose=0).argmax(1)
    rare = float((predicted[labels == 0] == 0).mean())
    result = {
        "train_weighted_accuracy": history.history["accuracy"][-1],
        "test_weighted_accuracy": weighted_accuracy,
        "rare_class_recall": rare,
        "samples_per_s": rate,
    }
    print(
        f"trained on {split} samples ({{'image', 'meta'}} -> label, weighted) at {rate:,.0f} samples/s; held out "
        f"{args.samples - split}: weighted accuracy {weighted_accuracy:.3f}, recall of the rare class {rare:.3f}"
    )
    return result


if __name__ == "__main__":
    main()

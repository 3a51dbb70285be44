"""End-to-end demo: write a synthetic image store larger than the memory budget, train streaming from it.

Run ``python examples/demo.py`` (about 600 MB of data, 64 MB budget) or ``--samples 5000`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import zarr

import daskfeed


def write_store(path: str, samples: int, chunk: int, seed: int = 0) -> None:
    """32x32x3 uint8 images whose mean brightness encodes one of 10 labels, sorted by label on disk."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(path, mode="w")
    images = root.create_array("images", shape=(samples, 32, 32, 3), chunks=(chunk, 32, 32, 3), dtype="u1")
    labels = root.create_array("labels", shape=(samples,), chunks=(chunk,), dtype="i8")
    all_labels = np.sort(rng.integers(0, 10, samples))
    for start in range(0, samples, chunk):
        y = all_labels[start : start + chunk]
        base = (y * 20 + 30)[:, None, None, None]
        images[start : start + len(y)] = np.clip(base + rng.normal(0, 25, (len(y), 32, 32, 3)), 0, 255).astype("u1")
        labels[start : start + len(y)] = y


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="demo.zarr", help="where to write the zarr store")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1024, help="samples per zarr chunk")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--memory-budget", default="64MB")
    parser.add_argument("--door", choices=["sequence", "dataset"], default="sequence")
    args = parser.parse_args(argv)

    import keras

    started = time.perf_counter()
    write_store(args.store, args.samples, args.chunk)
    arrays = daskfeed.open_zarr(args.store)
    data_mb = (arrays["images"].nbytes + arrays["labels"].nbytes) / 1e6
    print(f"wrote {args.store}: {args.samples} samples, {data_mb:.0f} MB, in {time.perf_counter() - started:.1f}s")

    # Windows hold uint8 (4x smaller than float32, so 4x more samples per window); the model scales.
    x = arrays["images"]
    kwargs = dict(batch_size=args.batch_size, seed=0, memory_budget=args.memory_budget)
    if args.door == "sequence":
        data = daskfeed.as_sequence(x, arrays["labels"], **kwargs)
        fit_kwargs = dict(shuffle=False)  # daskfeed already shuffles samples
    else:
        data = daskfeed.as_dataset(x, arrays["labels"], **kwargs)
        fit_kwargs = dict(shuffle=False)  # Keras warns that it cannot shuffle a tf.data.Dataset otherwise

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"{data!r}" if args.door == "sequence" else f"as_dataset over {len(x)} samples")
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    history = model.fit(data, epochs=args.epochs, verbose=2, **fit_kwargs)
    seconds = time.perf_counter() - started
    rate = args.samples * args.epochs / seconds
    result = {
        "samples_per_s": rate,
        "accuracy": history.history["accuracy"][-1],
        "peak_rss_mb": peak_rss_mb(),
        "data_mb": data_mb,
    }
    print(
        f"trained {args.epochs} epochs through as_{args.door}: {rate:,.0f} samples/s, "
        f"accuracy {result['accuracy']:.3f}; data {data_mb:.0f} MB, memory_budget {args.memory_budget}, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB (before training {rss_before:.0f} MB)"
    )
    return result


if __name__ == "__main__":
    main()

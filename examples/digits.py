"""A real dataset: scikit-learn's handwritten digits (shipped inside the package), ingested and trained on.

1,797 scans of 8x8 pixels, digits 0-9. The script splits them (stratified, seeded) into train and held-out
sets, saves each as .npy files, turns them into zarr stores with ``daskfeed ingest``, trains a small dense
network through daskfeed, and reports accuracy on the held-out set.

Run ``python examples/digits.py`` (needs ``pip install -e ".[examples]"`` for scikit-learn).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import daskfeed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="digits-example", help="where the .npy files and stores go")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--test-size", type=float, default=0.25)
    args = parser.parse_args(argv)

    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)[..., None]  # 0-16 -> 0-255, one channel
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=args.test_size, stratify=digits.target, random_state=0
    )
    os.makedirs(args.work, exist_ok=True)
    stores = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        np.save(os.path.join(args.work, f"{split}_images.npy"), x)
        np.save(os.path.join(args.work, f"{split}_labels.npy"), y)
        stores[split] = os.path.join(args.work, f"{split}.zarr")
        report = daskfeed.ingest(  # = daskfeed ingest images=... labels=... STORE --chunk-length 256 --shuffle
            [
                f"images={os.path.join(args.work, f'{split}_images.npy')}",
                f"labels={os.path.join(args.work, f'{split}_labels.npy')}",
            ],
            stores[split],
            chunk_length=256,
            shuffle=True,
            seed=0,
            overwrite=True,
        )
        print(report)

    train, test = daskfeed.open_zarr(stores["train"]), daskfeed.open_zarr(stores["test"])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    seq = daskfeed.as_sequence(train["images"], train["labels"], batch_size=32, seed=0)
    started = time.perf_counter()
    model.fit(seq, epochs=args.epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    held_out = daskfeed.as_sequence(test["images"], test["labels"], batch_size=256, shuffle=False)
    _loss, accuracy = model.evaluate(held_out, verbose=0)
    print(
        f"digits: trained on {len(x_train)} images for {args.epochs} epochs in {seconds:.1f}s; "
        f"held-out accuracy {accuracy:.3f} on {len(x_test)} images"
    )
    return {"test_accuracy": accuracy, "train_samples": len(x_train), "test_samples": len(x_test)}


if __name__ == "__main__":
    main()

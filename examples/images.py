"""A folder of images -> `daskfeed ingest` -> a small CNN, instead of a Sequence that calls imread per file.

The classic hand-written loader keeps a list of file names and decodes a batch of files in ``__getitem__``::

    class ImageSequence(keras.utils.Sequence):
        def __getitem__(self, i):
            files = self.files[i * self.batch_size : (i + 1) * self.batch_size]
            return np.stack([imread(f) for f in files]), self.labels[...]

Every epoch decodes every JPEG/PNG again, one file at a time, on the training thread. Here the folder is
decoded once, by ``daskfeed ingest`` (resized, labelled from the sub-folder names, shuffled), into a zarr store
that daskfeed then streams in bounded memory.

Run ``python examples/images.py`` to make a folder of synthetic images (three classes of shapes) and train on
it, or ``python examples/images.py --images PATH`` for your own folder (one sub-folder per class).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import daskfeed
from daskfeed.cli import main as daskfeed_command


def make_folder(root: str, per_class: int, seed: int = 0) -> None:
    """Squares, discs and crosses of random size, place and colour on noise, as PNG and JPEG files."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for label, name in enumerate(["squares", "discs", "crosses"]):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(40, 72))  # files of different sizes: ingest resizes them
            noise = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(noise)
            draw = ImageDraw.Draw(image)
            r = rng.uniform(0.2, 0.35) * size
            cx, cy = rng.uniform(r, size - r, 2)
            colour = tuple(int(c) for c in rng.integers(120, 256, 3))
            box = (cx - r, cy - r, cx + r, cy + r)
            if label == 0:
                draw.rectangle(box, fill=colour)
            elif label == 1:
                draw.ellipse(box, fill=colour)
            else:
                w = r / 3
                draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
                draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
            image.save(os.path.join(root, name, f"{i:05d}.{'png' if i % 2 else 'jpg'}"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="your folder of images, one sub-folder per class (default: make one)")
    parser.add_argument("--work", default="images-example", help="where the folders and stores go")
    parser.add_argument("--per-class", type=int, default=1500, help="synthetic images per class and split")
    parser.add_argument("--size", type=int, default=32, help="images are resized to size x size")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import keras

    os.makedirs(args.work, exist_ok=True)
    train_dir, test_dir = args.images, None
    if train_dir is None:
        train_dir, test_dir = os.path.join(args.work, "train"), os.path.join(args.work, "test")
        make_folder(train_dir, args.per_class, seed=0)
        make_folder(test_dir, max(args.per_class // 5, 20), seed=1)
    stores = {}
    for split, folder in (("train", train_dir), ("test", test_dir)):
        if folder is None:
            continue
        stores[split] = os.path.join(args.work, f"{split}.zarr")
        size = str(args.size)
        started = time.perf_counter()
        # the command line: daskfeed ingest FOLDER STORE --image-size 32 32 --shuffle --overwrite
        code = daskfeed_command(
            ["ingest", folder, stores[split], "--image-size", size, size, "--shuffle", "--seed", "0", "--overwrite"]
        )
        if code != 0:
            raise SystemExit(code)
        print(f"ingested {folder} in {time.perf_counter() - started:.1f}s")

    train = daskfeed.open_zarr(stores["train"])
    classes = len(daskfeed.info(stores["train"]).attrs["class_names"])
    seq = daskfeed.as_sequence(train["images"], train["labels"], batch_size=args.batch_size, seed=0)

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((args.size, args.size, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(seq, epochs=args.epochs, shuffle=False, verbose=2)  # daskfeed shuffles the samples
    rate = len(train["labels"]) * args.epochs / (time.perf_counter() - started)
    result = {"train_accuracy": history.history["accuracy"][-1], "samples_per_s": rate}
    if "test" in stores:
        test = daskfeed.open_zarr(stores["test"])
        held_out = daskfeed.as_sequence(test["images"], test["labels"], batch_size=256, shuffle=False)
        result["test_accuracy"] = model.evaluate(held_out, verbose=0)[1]
    print(
        f"trained {args.epochs} epochs on {len(train['labels'])} images at {rate:,.0f} samples/s; "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k.endswith("accuracy"))
    )
    return result


if __name__ == "__main__":
    main()

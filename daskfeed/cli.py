"""The ``daskfeed`` command: ingest, info, bench."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import warnings
from dataclasses import asdict
from typing import Any

from dask.utils import format_bytes

from daskfeed._compat import show_warning
from daskfeed.errors import DaskfeedError, DaskfeedWarning, DiskFullError
from daskfeed.options import DEFAULT_MEMORY_BUDGET, parse_bytes
from daskfeed.tools.ingest import COMPRESSIONS, DEFAULT_CHUNK_BYTES, DEFAULT_INGEST_MEMORY, stopped_message

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daskfeed",
        description="Turn arrays, images and zarr stores into a chunked zarr store, see what a store holds, and "
        "measure how fast daskfeed feeds training from it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {"ingest": _ingest_parser(commands)}  # type: ignore[attr-defined]
    # What info and bench share: a store, the loader's budget, JSON output.
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "store",
        metavar="STORE",
        help="a zarr store: a group (train.zarr, every array in it), one array in it (train.zarr/images), or a "
        "URL (s3://bucket/train.zarr, https://host/train.zarr); a store xarray wrote (Dataset.to_zarr) is read by "
        "its data variables along the sample dimension",
    )
    store.add_argument(
        "--memory-budget",
        default=DEFAULT_MEMORY_BUDGET,
        type=_size("--memory-budget"),
        metavar="SIZE",
        help="the decoded data the loader may hold, with its unit: 512MB, 2GiB (default "
        f"{format_bytes(DEFAULT_MEMORY_BUDGET)}); a number without a unit is bytes, and under 1 MiB it is refused "
        "as a likely missing unit (write 64B for 64 bytes)",
    )
    store.add_argument("--json", action="store_true", help="print JSON instead of text")
    info = commands.add_parser(
        "info",
        parents=[store],
        help="what a store holds, how a loader reads it, and layouts that will be slow",
        description="Each array's shape, dtype, chunks, size and compression ratio; how a loader with this budget "
        "reads the store (read units, reads per chunk, decode amplification, first-batch estimate); warnings "
        "for layouts that will be slow, with the command that fixes them, and for labels sorted along the "
        "sample axis.",
    )
    info.add_argument("--batch-size", type=int, default=32, help="the batch size you train with (default 32)")
    info.add_argument(
        "--verify",
        action="store_true",
        help="list the store and report every chunk missing from it (zarr would serve it as zeros); exits 1 "
        "when chunks are missing",
    )
    bench = commands.add_parser(
        "bench",
        parents=[store],
        help="daskfeed's samples/s on a store, and whether a training step would wait for data",
        description="Measure daskfeed's shuffled samples/s on STORE against reading its chunks in order, and "
        "with --step-ms, whether a training step of that many milliseconds per batch would wait for data.",
    )
    bench.add_argument("--batch-size", type=int, default=128, help="default 128")
    bench.add_argument("--step-ms", type=float, help="milliseconds one training step takes per batch")
    bench.add_argument(
        "--samples", type=int, help="samples per measurement (default: 100,000 or four windows, at most the store)"
    )
    bench.add_argument("--reads-per-chunk", default="auto", help="'auto' (default) or an int")
    bench.add_argument("--arrays", nargs="+", metavar="NAME", help="arrays to read (default: all)")
    parser.commands.update(info=info, bench=bench)  # type: ignore[attr-defined]
    return parser


def _ingest_parser(commands: Any) -> argparse.ArgumentParser:
    ingest = commands.add_parser(
        "ingest",
        help="write .npy / .npz / HDF5 files, zarr stores or a folder of images into one zarr store",
        description="Write .npy / .npz / HDF5 files, zarr stores or arrays, or a folder of images (one "
        "sub-folder per class) into one chunked, compressed zarr store. NAME=PATH names the array a source goes "
        "into; files with the same name are put end to end. HDF5: FILE.h5 takes every dataset, FILE.h5:PATH "
        "one. A zarr store takes every array (STORE/ARRAY one), rechunked along the sample axis only. A store "
        "xarray wrote (Dataset.to_zarr) is written along its sample dimension: its data variables and the "
        "coordinates along it (time) are shuffled together, coordinates along other dimensions (lat, lon) are "
        "kept as they are, and xarray.open_zarr(DEST) opens the result with its coordinates.",
    )
    ingest.add_argument("sources", nargs="+", metavar="SRC", help="source files, stores or folder ([NAME=]PATH)")
    ingest.add_argument("dest", metavar="DEST", help="the zarr store to write (a local directory)")
    ingest.add_argument("--chunk-length", type=int, help="samples per chunk (default: from --chunk-bytes)")
    ingest.add_argument(
        "--chunk-bytes",
        default=DEFAULT_CHUNK_BYTES,
        type=_size("--chunk-bytes"),
        metavar="SIZE",
        help=f"decoded bytes per chunk row, with the unit: 4MiB (default {format_bytes(DEFAULT_CHUNK_BYTES)})",
    )
    ingest.add_argument("--compression", choices=COMPRESSIONS, default="zstd", help="default zstd")
    ingest.add_argument("--shuffle", action="store_true", help="write samples in a random permutation")
    ingest.add_argument(
        "--seed",
        type=int,
        help="seed of the --shuffle permutation (default: drawn, printed, and kept by a rerun of an interrupted "
        "run); needs --shuffle",
    )
    ingest.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    ingest.add_argument("--color-mode", choices=("rgb", "grayscale", "rgba"), default="rgb")
    ingest.add_argument(
        "--memory",
        default=DEFAULT_INGEST_MEMORY,
        type=_size("--memory"),
        metavar="SIZE",
        help="memory --shuffle may use to place a bucket of samples, with the unit: 2GiB (default "
        f"{format_bytes(DEFAULT_INGEST_MEMORY)})",
    )
    ingest.add_argument("--workers", type=int, help="threads reading and writing chunks (default: one per core)")
    ingest.add_argument("--overwrite", action="store_true", help="replace DEST once the new store is complete")
    ingest.add_argument(
        "--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars (they go to stderr)"
    )
    return ingest


#: A size given without a unit and below this is taken for a missing unit (``--memory-budget 64``).
_BARE_SIZE_MIN = 2**20


def _size(flag: str) -> Any:
    """An argparse type for a size flag: dask's units (``512MB``, ``2GiB``), errors that name the flag."""

    def parse(text: str) -> int:
        bare = text.strip()
        if re.fullmatch(r"\d+", bare) and int(bare) < _BARE_SIZE_MIN:
            raise argparse.ArgumentTypeError(
                f"{text!r} has no unit, so it would be {int(bare)} bytes; write the unit: {bare}MB, {bare}MiB or "
                f"2GiB ({bare}B if you do mean bytes)"
            )
        try:
            return parse_bytes(text, flag)
        except DaskfeedError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "size"  # argparse names the type in its own messages
    return parse


def _ingest(args: argparse.Namespace) -> int:
    from daskfeed.tools.ingest import ingest

    try:
        report = ingest(
            args.sources,
            args.dest,
            chunk_length=args.chunk_length,
            chunk_bytes=args.chunk_bytes,
            compression=args.compression,
            shuffle=args.shuffle,
            seed=args.seed,
            image_size=tuple(args.image_size) if args.image_size else None,
            color_mode=args.color_mode,
            memory=args.memory,
            workers=args.workers,
            overwrite=args.overwrite,
            # The command shows bars unless --quiet, in a pipe too; DASKFEED_PROGRESS=0|1 decides when set.
            progress=False if args.quiet else (None if os.environ.get("DASKFEED_PROGRESS") else True),
        )
    except KeyboardInterrupt:
        _stopped(args.dest, "interrupted")
        return 130
    except DiskFullError:
        raise  # its message says what is kept and how to finish
    except DaskfeedError:
        _stopped(args.dest, None)
        raise
    print(report)
    return 0


def _stopped(dest: str, why: str | None) -> None:
    """Say what a stopped ingest left at ``dest`` and beside it, and how to finish."""
    message = stopped_message(dest, why)
    if message is not None:
        print(message, file=sys.stderr)


def _info(args: argparse.Namespace) -> int:
    from daskfeed.tools.info import info

    report = info(args.store, batch_size=args.batch_size, memory_budget=args.memory_budget, verify=args.verify)
    if args.json:
        print(json.dumps(asdict(report), default=str, indent=2))
    else:
        print(report)
    return 1 if any(report.missing.values()) else 0


def _bench(args: argparse.Namespace) -> int:
    from daskfeed.tools.bench import bench

    reads = args.reads_per_chunk if args.reads_per_chunk == "auto" else _int("--reads-per-chunk", args.reads_per_chunk)
    result = bench(
        args.store,
        batch_size=args.batch_size,
        step_ms=args.step_ms,
        samples=args.samples,
        memory_budget=args.memory_budget,
        reads_per_chunk=reads,
        arrays=args.arrays,
        progress=True,
    )
    if args.json:
        out = asdict(result)
        out.update(ratio=result.ratio, input_bound=result.input_bound, wait_ms_per_batch=result.wait_ms_per_batch)
        print(json.dumps(out, indent=2))
    else:
        print(result)
    return 0


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DaskfeedError(f"{flag} must be 'auto' or an int, got {value!r}") from None


#: Positional arguments, which have no flag to name in an error.
_POSITIONAL = frozenset({"command", "store", "sources", "dest"})


def _with_flag(args: argparse.Namespace, message: str) -> str:
    """A Python function's error as the command's: one that starts with an argument's Python name
    (``batch_size must be >= 1``) names the flag that set it instead (``--batch-size must be >= 1``)."""
    first = re.match(r"([a-z_]+)(?=[ =])", message)
    name = first.group(1) if first else ""
    if name in vars(args) and name not in _POSITIONAL:
        return f"--{name.replace('_', '-')}{message[len(name) :]}"
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the ``daskfeed`` command; returns the exit status (0 done, 1 failed, 2 bad usage, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "ingest" and args.seed is not None and not args.shuffle:
        parser.commands["ingest"].error(  # exits 2, after the usage line
            f"--seed {args.seed} orders the --shuffle permutation, but --shuffle is not given, so the samples "
            "would be written in source order and the seed ignored: add --shuffle (or drop --seed)"
        )
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(_show_warning, args.command)
            return {"ingest": _ingest, "info": _info, "bench": _bench}[args.command](args)
    except DaskfeedError as err:
        print(f"daskfeed {args.command}: error: {_with_flag(args, str(err))}", file=sys.stderr)
        return 1
    except ImportError as err:  # an optional package (Pillow, h5py) missing: the message says what to install
        print(f"daskfeed {args.command}: error: {err}", file=sys.stderr)
        return 1


def _show_warning(command: str, message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
    """daskfeed's warnings as the command's own lines on stderr; others as Python shows them."""
    if issubclass(category, DaskfeedWarning):
        print(f"daskfeed {command}: warning: {message}", file=sys.stderr)
    else:
        show_warning(message, category, *args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())

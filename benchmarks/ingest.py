"""daskfeed ingest against the loop users would write, and ingesting more data than the memory it may use.

``python benchmarks/ingest.py`` writes ``images.npy`` (32x32x3 uint8, sorted by label; 1.2 GB at full size) and
``labels.npy``, then measures in this process: (1) the hand-written copy, ``z[s:e] = np.load(..., mmap_mode="r")[s:e]``
chunk after chunk with zarr, the same codec; (2) ``daskfeed.ingest`` in source order; (3) the in-RAM shuffle users
write, ``x = np.load(...)[perm]`` then the same copy; (4) ``daskfeed.ingest(shuffle=True)``. Then both ingests
again as the ``daskfeed`` command in a cgroup whose memory limit is well under the data (page cache included).
Results go to ``benchmarks/results/ingest-{full,quick}.{md,json}``. ``--quick`` is the smoke size CI runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import daskfeed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from capped import run_capped  # noqa: E402  (beside this script, not a package)


def make_inputs(folder: Path, samples: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 10, samples))
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype="u1", shape=(samples, 32, 32, 3))
    for start in range(0, samples, 10_000):
        y = labels[start : start + 10_000]
        noise = rng.normal(0, 25, (len(y), 32, 32, 3))
        images[start : start + len(y)] = np.clip((y * 20 + 30)[:, None, None, None] + noise, 0, 255).astype("u1")
    images.flush()
    del images
    np.save(folder / "labels.npy", labels)
    return folder / "images.npy", folder / "labels.npy"


def hand_copy(images: np.ndarray, labels: np.ndarray, dest: Path, chunk: int, order: np.ndarray | None) -> None:
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")  # what daskfeed ingest writes by default
    root = zarr.open_group(str(dest), mode="w")
    arrays = [
        root.create_array(name, shape=a.shape, chunks=(chunk, *a.shape[1:]), dtype=a.dtype, compressors=codec)
        for name, a in (("x", images), ("y", labels))
    ]
    for target, source in zip(arrays, (images, labels)):
        for start in range(0, len(source), chunk):
            stop = min(len(source), start + chunk)
            target[start:stop] = source[start:stop] if order is None else source[order[start:stop]]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--quick", action="store_true", help="20,000 samples; no capped run")
    parser.add_argument("--work", help="folder for the inputs and stores (default: a temporary one)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    samples = 20_000 if args.quick else args.samples
    work = Path(args.work or tempfile.mkdtemp(prefix="daskfeed-ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images_path, labels_path = make_inputs(work, samples)
        sources = [f"x={images_path}", f"y={labels_path}"]
        data_mb = (images_path.stat().st_size + labels_path.stat().st_size) / 1e6
        chunk = daskfeed.ingest(sources, work / "probe.zarr", chunk_length=None).chunk_length
        shutil.rmtree(work / "probe.zarr")
        mm = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
        rows = []

        def row(name: str, seconds: float, baseline: float | None = None) -> None:
            rows.append(
                {
                    "name": name,
                    "seconds": seconds,
                    "mb_per_s": data_mb / seconds,
                    "ratio": None if baseline is None else baseline / seconds,
                }
            )

        hand = timed(lambda: hand_copy(mm, labels, work / "hand.zarr", chunk, None))
        row("hand-written copy, chunk after chunk (zarr, 1 thread)", hand)
        ours = timed(lambda: daskfeed.ingest(sources, work / "ours.zarr"))
        row("daskfeed.ingest, source order", ours, hand)
        perm = np.random.default_rng(0).permutation(samples)
        in_ram = timed(lambda: hand_copy(np.load(images_path), labels, work / "hand-shuffled.zarr", chunk, perm))
        row("hand-written shuffle: np.load whole, x[perm], copy", in_ram)
        shuffled = timed(lambda: daskfeed.ingest(sources, work / "ours-shuffled.zarr", shuffle=True, seed=0))
        row("daskfeed.ingest(shuffle=True), out of core", shuffled, in_ram)
        for name in ("hand.zarr", "ours.zarr", "hand-shuffled.zarr", "ours-shuffled.zarr"):
            shutil.rmtree(work / name)

        capped = {"ran": False, "why_not": "--quick: the data is too small to cap the process below it"}
        limit = int(min(500e6, data_mb * 1e6 / 2.4))
        if not args.quick:
            capped = {"limit_mb": limit / 1e6, "data_mb": data_mb, "runs": []}
            for extra in ([], ["--shuffle", "--seed", "0", "--memory", str(limit // 3)]):
                command = [sys.executable, "-m", "daskfeed.cli", "ingest", *sources, str(work / "capped.zarr")]
                started = time.perf_counter()
                result = run_capped([*command, "--quiet", "--overwrite", *extra], limit)
                result.update(seconds=time.perf_counter() - started, args=" ".join(extra) or "(in order)")
                result.pop("stdout", None)
                result["stderr"] = result.get("stderr", "")[-400:]
                capped["runs"].append(result)
                if not result["ran"]:
                    capped.update(ran=False, why_not=result["why_not"])
                    break
            else:
                capped["ran"] = True
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    report = {"samples": samples, "data_mb": data_mb, "chunk_length": chunk, "rows": rows, "capped": capped}
    text = render(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ingest-quick" if args.quick else "ingest-full"
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(report: dict) -> str:
    lines = [
        f"# daskfeed ingest: {report['samples']:,} images of 32x32x3 + labels, {report['data_mb']:.0f} MB of .npy, "
        f"chunks of {report['chunk_length']:,}",
        "",
        "| way of writing the store | seconds | MB/s | ratio to its baseline |",
        "|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        ratio = "baseline" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | {ratio} |")
    capped = report["capped"]
    lines.append("")
    if not capped.get("ran"):
        lines.append(f"Capped run: not run ({capped.get('why_not')}).")
    else:
        lines.append(
            f"Capped runs: the `daskfeed ingest` command in a cgroup limited to {capped['limit_mb']:.0f} MB "
            f"(page cache included) for {capped['data_mb']:.0f} MB of input:"
        )
        for r in capped["runs"]:
            lines.append(
                f"- {r['args']}: exit {r['returncode']}, {r['seconds']:.1f} s, cgroup peak "
                f"{r['cgroup_peak_mb']:.0f} MB, {r['oom_kills']} OOM kills"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

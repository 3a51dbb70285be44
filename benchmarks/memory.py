"""Peak memory against the budget, on a store with dask's default chunks (128 MiB decoded each).

``python benchmarks/memory.py`` writes 200,000 samples of 32x32x3 uint8 + int64 labels the way
``dask.array.to_zarr`` writes them by default (chunks of 43,690 samples: 128 MiB decoded), then, for each budget,
runs one epoch of a shuffled ``Loader`` in a fresh process and records its peak RSS above the RSS it had once the
store was open (the baseline, in the same process). The loader promises: decoded data within ``memory_budget``,
and chunks being decoded within a quarter of it on top (one chunk at least, which the loader warns about when a
chunk alone is more). Writes ``results/memory[-quick].md`` and ``.json``. ``--quick`` is the smoke size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_store(path: str, n: int, chunk: int) -> None:
    import dask.array as da

    rng = da.random.default_rng(0)
    x = rng.integers(0, 64, (n, 32, 32, 3), dtype="u1", chunks=(chunk, 32, 32, 3))
    y = rng.integers(0, 10, n, chunks=n)
    x.to_zarr(path, component="x", overwrite=True)
    y.to_zarr(path, component="y", overwrite=True)


def high_water_mark() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (``ru_maxrss`` keeps the parent's peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(store: str, budget: str) -> dict:
    """One epoch in this process: the peak RSS above the baseline, and what the loader decided."""
    import psutil

    import daskfeed

    arrays = daskfeed.open_zarr(store)
    base = psutil.Process().memory_info().rss
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = daskfeed.Loader(arrays["x"], arrays["y"], batch_size=128, seed=0, memory_budget=budget)
    started, served = time.perf_counter(), 0
    with loader:
        for _, y in loader:
            served += len(y)
    peak = high_water_mark()
    limit = loader.decode_limit
    return {
        "budget": loader.memory_budget,
        "layout": loader.layout.describe(),
        "threads": limit.threads,
        "chunk_bytes": limit.chunk_bytes,
        "promised": loader.memory_budget + limit.transient_bytes,
        "peak_above_base": peak - base,
        "seconds": time.perf_counter() - started,
        "served": served,
        "warned": any("decodes to" in str(w.message) for w in caught),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(HERE / "results" / "tmp" / "memory.zarr"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quick", action="store_true", help="smoke size: 20,000 samples in chunks of 5,000")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return {"child": True}
    n, chunk, budgets = (200_000, 43_690, ["64MB", "256MB", "1GiB"])
    if args.quick:
        n, chunk, budgets = 20_000, 5_000, ["4MB", "16MB", "64MB"]
    make_store(args.store, n, chunk)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = []
    for budget in budgets:
        command = [sys.executable, __file__, "--child", args.store, budget]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(
            f"  {budget}: peak {r['peak_above_base'] / 2**20:.0f} MiB above the baseline, promised at most "
            f"{r['promised'] / 2**20:.0f} MiB ({r['threads']} reading threads, {r['seconds']:.1f}s)",
            flush=True,
        )
    mib = 2**20
    lines = [
        f"{n:,} samples of 32x32x3 uint8 + int64 labels, x in chunks of {chunk:,} ({chunk * 3072 / mib:.0f} MiB "
        f"decoded each, as dask's defaults write them), one shuffled epoch per budget in a fresh process, batch 128.",
        "Peak: the process's peak RSS less its RSS once the store was open. Promised: the budget plus chunks being "
        "decoded (twice a chunk's decoded size, for each chunk decoded at once).",
        "",
        "| memory_budget | layout | reading threads | peak above baseline | promised | peak / promised | warned "
        "| epoch |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for budget, r in zip(budgets, runs):
        how = r["layout"].split(";")[-1].strip()
        lines.append(
            f"| {budget} | {how} | {r['threads']} | {r['peak_above_base'] / mib:.0f} MiB | "
            f"{r['promised'] / mib:.0f} MiB | {r['peak_above_base'] / r['promised']:.2f} | "
            f"{'yes' if r['warned'] else 'no'} | {r['seconds']:.1f}s |"
        )
    report = {"samples": n, "chunk": chunk, "runs": dict(zip(budgets, runs))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "memory-quick" if args.quick else "memory"
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2))
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)

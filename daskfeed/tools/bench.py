"""bench: daskfeed's samples/s on a user's own store, against reading its chunks in order."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskfeed.errors import InputError, StoreError
from daskfeed.inputs import chunk_bounds
from daskfeed.loader import Loader
from daskfeed.options import DEFAULT_MEMORY_BUDGET
from daskfeed.tools.progress import progress_default

__all__ = ["BenchResult", "bench"]

#: Samples measured per way of reading when ``samples`` is not given (or the whole store, if smaller).
DEFAULT_SAMPLES = 100_000
#: The run with a simulated training step lasts about this long at most.
STEP_RUN_SECONDS = 10.0
#: A step waits for data when the loop runs this much slower than the steps alone.
WAIT_TOLERANCE = 0.05


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench` measured; ``str()`` of it is the report ``daskfeed bench`` prints."""

    store: str
    arrays: tuple[str, ...]
    samples: int
    batch_size: int
    reads_per_chunk: int
    window_samples: int
    in_order_samples_per_s: float
    daskfeed_samples_per_s: float
    first_batch_s: float
    layout: str = ""
    step_ms: float | None = None
    step_alone_ms: float = 0.0
    step_batches: int = 0
    step_wall_ms_per_batch: float = 0.0

    @property
    def ratio(self) -> float:
        """daskfeed's shuffled samples/s over the in-order chunk read."""
        return self.daskfeed_samples_per_s / self.in_order_samples_per_s

    @property
    def loader_ms_per_batch(self) -> float:
        """How long the loader takes to deliver one batch when nothing else runs."""
        return 1000 * self.batch_size / self.daskfeed_samples_per_s

    @property
    def wait_ms_per_batch(self) -> float | None:
        """With the simulated step: how long each step waited for its batch, on average."""
        return None if self.step_ms is None else max(0.0, self.step_wall_ms_per_batch - self.step_alone_ms)

    @property
    def input_bound(self) -> bool | None:
        """With the simulated step: whether steps of ``step_ms`` waited for data (ran 5% slower than alone)."""
        if self.step_ms is None:
            return None
        return self.step_wall_ms_per_batch > (1 + WAIT_TOLERANCE) * self.step_alone_ms

    def __str__(self) -> str:
        lines = [
            f"store {self.store}: arrays {', '.join(self.arrays)}; {self.samples:,} samples per measurement, "
            f"batch_size {self.batch_size}",
            f"  chunks read in order (zarr, one thread)  {self.in_order_samples_per_s:>12,.0f} samples/s",
            f"  daskfeed, shuffled (reads_per_chunk={self.reads_per_chunk})    "
            f"{self.daskfeed_samples_per_s:>12,.0f} samples/s  ({self.ratio:.2f}x in order)",
            f"  daskfeed delivers a batch every {self.loader_ms_per_batch:.2f} ms, after {self.first_batch_s:.1f}s "
            f"for the first window ({self.window_samples:,} samples at most per window)",
            f"  loader: {self.layout}",
        ]
        if self.step_ms is not None:
            verdict = (
                f"WAITS for data: {self.step_wall_ms_per_batch:.2f} ms per step instead of {self.step_alone_ms:.2f} "
                f"ms alone ({self.step_batches} steps measured)."
                " The loader is the bottleneck: raise the batch size, use a larger memory_budget, store chunks "
                "that decode faster (lz4, or no compression), or run on a dask cluster"
                if self.input_bound
                else f"does not wait for data ({self.step_wall_ms_per_batch:.2f} ms per step with the loader, "
                f"{self.step_alone_ms:.2f} ms alone, over {self.step_batches} steps): training is compute-bound"
            )
            lines.append(f"  a training step of {self.step_ms:g} ms per batch {verdict}")
        return "\n".join(lines)


def _zarr_arrays(store: Any) -> tuple[str, dict[str, Any], tuple[str, ...] | None]:
    """Where the store is, its arrays (dask, zarr) by name, and for a store xarray wrote the data variables
    along its sample dimension (its coordinates, ``time``, are no input)."""
    import zarr

    from daskfeed.inputs import open_zarr, open_zarr_node, store_roles, zarr_behind

    opened = open_zarr(store)
    where = str(store.store_path) if isinstance(store, zarr.Group) else str(store)
    if not isinstance(opened, dict):
        return where, {"x": (opened, zarr_behind(opened))}, None
    found = {name: (arr, zarr_behind(arr)) for name, arr in opened.items()}
    group, _ = open_zarr_node(store)
    roles = store_roles({name: z for name, (_, z) in found.items() if z is not None}, dict(group.attrs))
    return where, found, roles.variables if roles is not None else None


def bench(
    store: Any,
    *,
    batch_size: int = 128,
    step_ms: float | None = None,
    samples: int | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    reads_per_chunk: int | str = "auto",
    arrays: list[str] | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> BenchResult:
    """Measure daskfeed on your own store, and whether a training step would wait for data.

    Three measurements, in one process: (1) reading the store's chunks in order with zarr, one thread, the
    baseline every hand-written loader is bounded by; (2) daskfeed's shuffled batches, as fast as they come,
    timed from the first batch (the first window is reported apart: it is paid once per run);
    (3) with ``step_ms``, daskfeed's batches with a simulated training step of ``step_ms`` per batch (a sleep,
    which releases the GIL the way TensorFlow's ops do), to see whether the step waits for its data.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        The zarr store; every array of the same length as the first feeds the loader (see ``arrays``).
    batch_size : int, default 128
    step_ms : float, optional
        Milliseconds one training step takes per batch (Keras prints it in ``fit``'s progress bar).
    samples : int, optional
        Samples per measurement; default 100,000 or four windows, whichever is more, and at most the store.
    memory_budget, reads_per_chunk
        As for :class:`daskfeed.Loader`.
    arrays : list of str, optional
        Names of the arrays to read; default all arrays of the first array's length (for a store xarray wrote,
        its data variables along the sample dimension, not its coordinates).
    seed : int, default 0
    progress : bool, optional
        Say on standard error which measurement runs (each takes seconds); by default when standard error is a
        terminal or a Jupyter notebook.

    Returns
    -------
    BenchResult
    """
    if step_ms is not None and (not isinstance(step_ms, (int, float)) or isinstance(step_ms, bool) or step_ms <= 0):
        raise InputError(f"step_ms must be a positive number of milliseconds, got {step_ms!r}")
    if samples is not None and (not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1):
        raise InputError(f"samples must be a positive int, got {samples!r}")
    say = _say if (progress_default() if progress is None else progress) else lambda text: None
    where, chosen = _choose(store, arrays)
    x = {name: arr for name, (arr, _) in chosen.items()}
    kwargs = dict(batch_size=batch_size, memory_budget=memory_budget, reads_per_chunk=reads_per_chunk)
    probe = Loader(x, seed=seed, **kwargs)  # no thread until a batch is asked for
    n, window, reads = probe.inputs.n_samples, probe.layout.window_samples, probe.reads_per_chunk
    # Several windows, so that the loader's steady state is measured, not only its first window.
    count = min(n, samples or max(DEFAULT_SAMPLES, 4 * window))
    say(f"reading {count:,} samples of {', '.join(chosen)} in order with zarr, one thread ...")
    in_order = _in_order_rate(chosen, count)
    say(f"reading {count:,} samples through daskfeed, shuffled ...")
    with probe as loader:
        first_batch_s, rate = _loader_rate(loader, count)
    step_batches, wall_per_batch, step_alone = 0, 0.0, 0.0
    if step_ms is not None:
        step_batches = max(2, min(math.ceil(count / batch_size), math.ceil(STEP_RUN_SECONDS * 1000 / step_ms)))
        say(f"{step_batches} training steps of {step_ms:g} ms, alone and with daskfeed ...")
        step_alone = _step_alone_ms(step_ms, min(step_batches, max(10, math.ceil(1000 / step_ms))))
        with Loader(x, seed=seed + 1, **kwargs) as loader:
            wall_per_batch = _with_steps_ms(loader, step_ms, step_batches)
    return BenchResult(
        store=where,
        arrays=tuple(chosen),
        samples=count,
        batch_size=batch_size,
        reads_per_chunk=reads,
        window_samples=int(window),
        in_order_samples_per_s=in_order,
        daskfeed_samples_per_s=rate,
        first_batch_s=first_batch_s,
        layout=re.sub(r"x\['([^']*)'\]", r"\1", probe.layout.describe()),  # the store's names, not x['...']
        step_ms=step_ms,
        step_alone_ms=step_alone,
        step_batches=step_batches,
        step_wall_ms_per_batch=wall_per_batch,
    )


def _say(text: str) -> None:
    print(f"daskfeed bench: {text}", file=sys.stderr, flush=True)


def _choose(store: Any, arrays: list[str] | None) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The arrays to read: those named, the data variables of a store xarray wrote, or every array of the
    first array's length."""
    where, found, variables = _zarr_arrays(store)
    if arrays is not None:
        missing = [a for a in arrays if a not in found]
        if missing:
            raise StoreError(f"store {where!r} has no array {missing[0]!r}; it has {', '.join(sorted(found))}")
        return where, {a: found[a] for a in arrays}
    if variables:
        return where, {k: found[k] for k in sorted(variables)}
    first = found[min(found)][0].shape[0]
    return where, {k: found[k] for k in sorted(found) if found[k][0].shape[0] == first}


def _in_order_rate(chosen: dict[str, tuple[Any, Any]], count: int) -> float:
    """Samples/s reading the chunks in order with zarr, one thread: what a hand-written loader at its best does."""
    started = time.perf_counter()
    for arr, z in chosen.values():
        ends = chunk_bounds(arr)[1:]
        last = int(np.searchsorted(ends, count))  # the chunk that holds sample count - 1
        for lo, hi in zip((0, *ends[:last]), ends[: last + 1]):
            if z is not None:
                z[int(lo) : int(hi)]
            else:
                arr[int(lo) : int(hi)].compute()
    return count / (time.perf_counter() - started)


def _loader_rate(loader: Loader, count: int) -> tuple[float, float]:
    """Seconds to the first batch, then samples/s over ``count`` samples with nothing else running."""
    started = time.perf_counter()
    batches = _batches(loader)
    next(batches)
    first_batch_s = time.perf_counter() - started
    started = time.perf_counter()
    done = 0
    while done < count:
        done += len(next(iter(next(batches).values())))
    rate = done / (time.perf_counter() - started)
    batches.close()
    return first_batch_s, rate


def _step_alone_ms(step_ms: float, steps: int) -> float:
    """Milliseconds a simulated step really takes alone (a sleep overshoots a little)."""
    started = time.perf_counter()
    for _ in range(steps):
        time.sleep(step_ms / 1000)
    return 1000 * (time.perf_counter() - started) / steps


def _with_steps_ms(loader: Loader, step_ms: float, steps: int) -> float:
    """Milliseconds per batch of a loop that takes a batch, then sleeps ``step_ms`` (the GIL released)."""
    batches = _batches(loader)
    next(batches)
    started = time.perf_counter()
    for _ in range(steps):
        next(batches)
        time.sleep(step_ms / 1000)
    wall = 1000 * (time.perf_counter() - started) / steps
    batches.close()
    return wall


def _batches(loader: Loader) -> Any:
    """Batches of epoch after epoch, for as long as they are asked for."""
    while True:
        yield from loader

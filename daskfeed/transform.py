"""Per-batch transforms (``transform=``): run on daskfeed's threads with a generator seeded by (seed, epoch, batch)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from daskfeed.errors import DaskfeedError, InputTypeError

__all__ = ["Ahead", "apply_transform", "check_transform", "flatten_batch", "transform_rng"]

#: Keeps the transform's random stream apart from the plan's (``daskfeed.plan`` uses keys 0-3).
_TRANSFORM = 4
_pool_ids = itertools.count()


def check_transform(transform: Any) -> Callable[[Any, np.random.Generator], Any] | None:
    """``transform`` if it is None or callable; an error naming the knob otherwise."""
    if transform is None or callable(transform):
        return transform
    raise InputTypeError(
        f"transform must be a function transform(batch, rng) -> batch, or None; got {type(transform).__name__} "
        f"{transform!r}"
    )


def transform_rng(seed: int, shard: int, epoch: int, index: int) -> np.random.Generator:
    """The generator ``transform`` gets for batch ``index`` of ``epoch``: the same for the same seed, another
    for every batch, epoch and shard.

    Examples
    --------
    >>> a, b = transform_rng(0, 0, 1, 5), transform_rng(0, 0, 1, 5)
    >>> bool(a.random() == b.random()), bool(transform_rng(0, 0, 2, 5).random() == transform_rng(0, 0, 1, 5).random())
    (True, False)
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(shard), int(epoch), int(index), _TRANSFORM]))


def flatten_batch(structure: Any, batch: Any, where: str) -> list[np.ndarray]:
    """The leaves of ``batch`` (``x``, ``(x, y)`` or ``(x, y, sample_weight)``, dicts as the loader's inputs
    have them) as numpy arrays, in the loader's leaf order; a :class:`DaskfeedError` if the structure differs."""
    roles = [role for role, _ in structure]
    parts = [batch] if len(structure) == 1 else batch
    if len(structure) > 1 and (not isinstance(batch, (tuple, list)) or len(batch) != len(structure)):
        raise DaskfeedError(
            f"transform returned {type(batch).__name__} for {where}, expected a tuple {tuple(roles)} as it was given; "
            "return a batch of the same structure"
        )
    flat = []
    for (role, keys), part in zip(structure, parts):
        if keys is None:
            if isinstance(part, (Mapping, tuple, list)):
                raise DaskfeedError(
                    f"transform returned a {type(part).__name__} as {role} for {where}, expected an array as it was "
                    "given; return a batch of the same structure"
                )
            flat.append(np.asarray(part))
            continue
        if not isinstance(part, Mapping) or set(part) != set(keys):
            got = sorted(part) if isinstance(part, Mapping) else type(part).__name__
            raise DaskfeedError(
                f"transform returned {got} as {role} for {where}, expected a dict with keys {sorted(keys)} as it "
                "was given; return a batch of the same structure"
            )
        flat += [np.asarray(part[k]) for k in keys]
    return flat


def apply_transform(
    transform: Callable[[Any, np.random.Generator], Any],
    pack: Callable[[list[np.ndarray]], Any],
    structure: Any,
    batch: Any,
    rng: np.random.Generator,
    epoch: int,
    index: int,
) -> Any:
    """``transform(batch, rng)``, checked: an error inside it, or a batch of another structure, is a
    :class:`DaskfeedError` that names the batch (the original error chained as its ``__cause__``)."""
    where = f"batch {index} of epoch {epoch}"
    try:
        out = transform(batch, rng)
    except Exception as err:
        raise DaskfeedError(f"transform raised {type(err).__name__} on {where}: {err}") from err
    return pack(flatten_batch(structure, out, where))


class Ahead:
    """Transformed batches made on ``daskfeed-transform-N`` threads for a caller that asks them one by one (a
    Keras ``PyDataset``): when batch ``i`` is asked right after batch ``i - 1``, the next ``depth`` batches of
    the epoch are started too. Out-of-order asks make nothing ahead. Pools are closed idempotently; a fork or a
    pickled copy builds its own."""

    def __init__(self, make: Callable[[int, int], Any], depth: int = 4, threads: int = 2):
        self.make, self.depth, self.threads = make, depth, threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[tuple[int, int], Future] = {}
        self._last: tuple[int, int] | None = None
        self._closed = False

    def get(self, epoch: int, index: int, n_batches: int) -> Any:
        with self._lock:
            future = self._futures.pop((epoch, index), None)
            sequential = self._last == (epoch, index - 1)
            self._last = (epoch, index)
            for key in [k for k in self._futures if k[0] != epoch or k[1] < index]:  # never asked: let go
                self._futures.pop(key).cancel()
            if self._closed:
                raise DaskfeedError("this loader is closed; make a new one to read more batches")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"daskfeed-transform-{next(_pool_ids)}"
                )
            # Not made ahead: on a daskfeed thread too, so the transform never runs on the caller's.
            if future is None or future.cancelled():
                future = self._pool.submit(self.make, epoch, index)
            if sequential:
                for j in range(index + 1, min(index + 1 + self.depth, n_batches)):
                    if (epoch, j) not in self._futures:
                        self._futures[(epoch, j)] = self._pool.submit(self.make, epoch, j)
        return future.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

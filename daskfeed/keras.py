"""as_sequence: the Keras PyDataset front-end (importing this module imports Keras)."""

from __future__ import annotations

import threading
from typing import Any

import keras

from daskfeed.errors import InputError
from daskfeed.loader import Loader
from daskfeed.options import DEFAULT_MEMORY_BUDGET, KNOBS, check_int

__all__ = ["Sequence", "as_sequence"]


class Sequence(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` over a :class:`daskfeed.Loader`; made by :func:`daskfeed.as_sequence`.

    ``seq[i]`` is batch ``i`` of the current epoch, whatever order and however many threads ask.
    ``on_epoch_end()`` moves to the next epoch when one was run: Keras brackets each epoch with
    ``on_epoch_begin()`` / ``on_epoch_end()`` (and calls ``on_epoch_end()`` once before the first, which must
    not skip epoch 0), and a hand-written loop that served ``len(seq)`` batches counts too. It pickles without
    its threads and windows, which the copy rebuilds on first use, so ``use_multiprocessing=True`` workers
    compute correct batches.
    """

    def __init__(
        self, loader: Loader, *, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.loader = loader
        self._lock = threading.Lock()
        self._began = False
        self._served = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self.loader):
            raise IndexError(f"batch index {index} is out of range for a sequence of {len(self.loader)} batches")
        batch = self.loader.batch(index)
        with self._lock:
            self._served += 1
        return batch

    def on_epoch_begin(self) -> None:
        self._began = True

    def on_epoch_end(self) -> None:
        with self._lock:
            ran = self._began or self._served >= len(self.loader)
            self._began = False
            if ran:
                self._served = 0
        if ran:
            self.loader.next_epoch()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def close(self) -> None:
        """Stop the loader's threads and free its windows. Idempotent."""
        self.loader.close()

    def __enter__(self) -> Sequence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<daskfeed.keras.Sequence over {self.loader!r}>"


def as_sequence(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    drop_remainder: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    reads_per_chunk: int | str = "auto",
    scheduler: Any = None,
    shard: tuple[int, int] | None = None,
    workers: int = 1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
) -> Sequence:
    """Serve shuffled batches of chunked arrays to Keras as a ``keras.utils.PyDataset``.

    Parameters
    ----------
    x : array or dict of arrays
        Model inputs: dask arrays, zarr arrays, numpy arrays or xarray DataArrays, sharing the length of
        axis 0 (the sample axis). A dict feeds a multi-input model by input name.
    y, sample_weight : array or dict of arrays, optional
        Targets and per-sample weights, the same kinds as ``x``. ``x`` alone serves prediction.
    batch_size, shuffle, seed, drop_remainder, memory_budget, reads_per_chunk, scheduler, shard
        The loader's knobs, documented in :class:`daskfeed.LoaderOptions`. The defaults: batches of 32,
        shuffled across chunks with a drawn seed, a memory budget of 1 GiB, ``reads_per_chunk="auto"``.
    workers, use_multiprocessing, max_queue_size
        Passed to ``keras.utils.PyDataset``. daskfeed already computes ahead on its own threads, so
        ``workers=1`` is enough to keep a training step fed.

    Returns
    -------
    daskfeed.keras.Sequence
        ``len(seq)`` batches per epoch; ``seq[i]`` is ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.

    Notes
    -----
    Pass ``shuffle=False`` to ``model.fit``: daskfeed shuffles samples itself, and Keras's own shuffle only
    reorders batch indices, which makes daskfeed compute windows again (it warns once when that happens).

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x, y = np.random.rand(100, 4).astype("f4"), np.arange(100) % 2
    >>> seq = daskfeed.as_sequence(x, y, batch_size=32, seed=0)
    >>> len(seq), seq[0][0].shape, seq[3][1].shape
    (4, (32, 4), (4,))
    >>> seq.close()
    """
    knobs = {name: value for name, value in locals().items() if name in KNOBS}
    check_int("workers", workers, 0)
    check_int("max_queue_size", max_queue_size, 1)
    if not isinstance(use_multiprocessing, bool):
        raise InputError(f"use_multiprocessing must be True or False, got {use_multiprocessing!r}")
    loader = Loader(x, y, sample_weight, **knobs)
    return Sequence(loader, workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)

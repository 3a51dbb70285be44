"""as_sequence: the Keras PyDataset front-end (importing this module imports Keras)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import keras
import numpy as np

from daskfeed import heap
from daskfeed._compat import KerasBackupSaved
from daskfeed.errors import DaskfeedWarning, InputError, InputTypeError, warn
from daskfeed.loader import Loader
from daskfeed.options import check_int
from daskfeed.state import Position

__all__ = ["BackupAndRestore", "Sequence", "as_sequence"]


class Sequence(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` over a :class:`daskfeed.Loader`; made by :func:`daskfeed.as_sequence`.

    ``seq[i]`` is batch ``i`` of the current epoch, whatever order and however many threads ask. The epoch
    moves on once every batch of it was served, at the next of these: Keras's ``on_epoch_begin()`` or
    ``on_epoch_end()``, or a request for a batch. So Keras epoch ``k`` trains on daskfeed's epoch ``k`` on every
    backend: the batch JAX and PyTorch read to build the model (between an ``on_epoch_begin()`` and an
    ``on_epoch_end()``, before the first epoch) does not end an epoch, and ``steps_per_epoch`` shorter than
    ``len(seq)`` goes on through the epoch. A hand-written loop that asks for every index once is an epoch too.

    Keras is always told ``workers=1`` and ``use_multiprocessing=False``: its worker pool keeps the batches it
    computed ahead at the end of one epoch and trains on them at the start of the next, so with the batch Keras
    reads first on JAX and PyTorch every epoch would mix two of daskfeed's epochs. daskfeed computes ahead
    on its own threads instead. It pickles without its threads and windows, which the copy rebuilds on first use.
    """

    def __init__(
        self, loader: Loader, *, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ):
        # ``workers`` and ``use_multiprocessing`` are accepted for the signature Keras users know; see the class.
        del workers, use_multiprocessing
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.loader = loader
        self._locks: dict[int, threading.Lock] = {}
        #: Which of the Keras epoch's batches were served (by Keras's index), since the loader's position was
        #: ``_start``: Keras's batch ``i`` is the loader's batch ``i`` after that position.
        self._start = loader.position
        self._heap_due = True  # set glibc's heap back at the first batch of each Keras epoch (see daskfeed.heap)
        self._served = bytearray(len(loader))
        self._left = len(loader)

    # Keras reads these two to decide whether to start its worker pool: never (see the class docstring).
    @property
    def workers(self) -> int:
        return 1

    @workers.setter
    def workers(self, value: Any) -> None:
        if value != 1:
            raise InputError(f"a daskfeed Sequence serves batches with Keras's workers=1, got workers={value!r}")

    @property
    def use_multiprocessing(self) -> bool:
        return False

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: Any) -> None:
        if value is not False:
            raise InputError(
                f"a daskfeed Sequence serves batches with Keras's use_multiprocessing=False, got {value!r}"
            )

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> Any:
        n = len(self.loader)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InputTypeError(f"batch index must be an int, got {type(index).__name__}")
        if not 0 <= index < n:
            raise IndexError(f"batch index {index} is out of range for a sequence of {n} batches")
        with self._lock:
            self._end_epoch_if_served()  # a request after the whole epoch: the next epoch has begun
            if not self._served[index]:
                self._served[index] = 1
                self._left -= 1
            start = self._start
            heap_due, self._heap_due = self._heap_due, False
        if heap_due:  # the first batch after Keras's epoch began: its from_generator op has pinned glibc's heap
            heap.keep_buffers_in_heap()
        at = start.next_batch + index  # after a restore, Keras's epochs run on across the loader's epochs
        # An error is kept as self.loader.error: in fit, TensorFlow raises its own holding the text.
        return self.loader.batch(at % n, start.epoch + at // n)

    @property
    def _lock(self) -> threading.Lock:
        """A lock of this process's own: one inherited through a fork may be held by a thread that is not there."""
        lock = self._locks.get(os.getpid())
        if lock is None:
            lock = self._locks.setdefault(os.getpid(), threading.Lock())
        return lock

    def _end_epoch_if_served(self) -> None:
        """Move the loader's position on by an epoch's batches if every batch of this Keras epoch was served
        (called with the lock held)."""
        n = len(self.loader)
        if self._start != self.loader.position:  # moved by restore() or loader.set_epoch(): nothing served yet
            self._start, self._served, self._left = self.loader.position, bytearray(n), n
        if self._left == 0:
            self.loader.set_epoch(self._start.epoch + 1, self._start.next_batch)
            self._start, self._served, self._left = self.loader.position, bytearray(n), n

    def position(self, batches: int) -> int:
        """The place in the stream of batches (``epoch * len + index``) after ``batches`` of this Keras epoch."""
        return self.loader.position.index(len(self.loader)) + batches

    def state_at(self, position: int) -> dict[str, Any]:
        """:meth:`daskfeed.Loader.state` for a place in the stream of batches."""
        return self.loader.state(*Position.at(position, len(self.loader)))

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to the place ``state`` records: the next Keras epoch starts with the batch after it."""
        with self._lock:
            self.loader.restore(state)
            self._start, self._served, self._left = self.loader.position, bytearray(len(self)), len(self)

    def on_epoch_begin(self) -> None:
        with self._lock:
            self._end_epoch_if_served()
            self._heap_due = True

    def on_epoch_end(self) -> None:
        with self._lock:
            self._end_epoch_if_served()
            self._heap_due = True

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_locks"] = {}
        return state

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
    workers: int = 1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
    **knobs: Any,
) -> Sequence:
    """Serve shuffled batches of chunked arrays to Keras as a ``keras.utils.PyDataset``.

    Parameters
    ----------
    x : array or dict of arrays
        Model inputs: dask arrays, zarr arrays, numpy arrays or xarray DataArrays, sharing the length of
        axis 0 (the sample axis). A dict feeds a multi-input model by input name.
    y, sample_weight : array or dict of arrays, optional
        Targets and per-sample weights, the same kinds as ``x``. ``x`` alone serves prediction.
    **knobs
        The loader's knobs: the fields of :class:`daskfeed.LoaderOptions`, written and documented there only
        (``batch_size``, ``shuffle``, ``seed``, ``drop_remainder``, ``memory_budget``, ``reads_per_chunk``,
        ``scheduler``, ``shard``, ``missing_chunks``, ``no_workers_timeout``, ``concurrency``, ``window``,
        ``stride``, ``transform``), or ``options=`` a ``LoaderOptions`` (knobs given beside it win). A name that
        is not a knob is an error listing them. The defaults: batches of 32, shuffled across chunks with a drawn
        seed, a memory budget of 1 GiB, ``reads_per_chunk="auto"``, one sample per row (``window={0: 48}``
        serves windows of a series, ``window={1: 64, 2: 64}`` patches).
    workers, use_multiprocessing, max_queue_size
        Accepted as ``keras.utils.PyDataset`` takes them, but Keras always gets ``workers=1`` and
        ``use_multiprocessing=False`` (with a :class:`daskfeed.DaskfeedWarning` when asked for more): Keras's
        worker pool trains the batches it computed ahead at the end of one epoch in the next, and it is
        slower here than daskfeed, which computes ahead on its own threads.

    Returns
    -------
    daskfeed.keras.Sequence
        ``len(seq)`` batches per epoch; ``seq[i]`` is ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.

    Notes
    -----
    Works on every Keras 3 backend (JAX, PyTorch, TensorFlow): Keras epoch ``k`` trains on the loader's epoch
    ``k``, every sample once. Pass ``shuffle=False`` to ``model.fit``: daskfeed shuffles samples itself, and
    Keras's own shuffle only reorders batch indices, which makes daskfeed compute windows again (it warns once
    when that happens).

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x, y = np.random.rand(100, 4).astype("f4"), np.arange(100) % 2
    >>> seq = daskfeed.as_sequence(x, y, batch_size=32, seed=0)
    >>> len(seq), seq[0][0].shape, seq[3][1].shape
    (4, (32, 4), (4,))
    >>> seq.close()
    """
    check_int("workers", workers, 0)
    check_int("max_queue_size", max_queue_size, 1)
    if not isinstance(use_multiprocessing, bool):
        raise InputError(f"use_multiprocessing must be True or False, got {use_multiprocessing!r}")
    asked = [f"workers={workers}"] if workers > 1 else []
    asked += ["use_multiprocessing=True"] if use_multiprocessing else []
    if asked:
        warn(
            f"{' and '.join(asked)} {'are' if len(asked) > 1 else 'is'} not handed to Keras: its worker pool trains "
            "the batches it computed ahead at the end of one epoch in the next one (on JAX and PyTorch every "
            "epoch would mix two of daskfeed's epochs), and daskfeed already computes ahead on its own threads. "
            "Keras gets workers=1; leave these arguments out to silence this warning",
            DaskfeedWarning,
        )
    loader = Loader(x, y, sample_weight, **knobs)
    return Sequence(loader, max_queue_size=max_queue_size)


class BackupAndRestore(KerasBackupSaved, keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that also saves the place of a :class:`Sequence` and restores it, so
    a ``fit`` killed mid-epoch and started again goes on with exactly the batches the uninterrupted run
    would have served: none served twice, none skipped.

    Keras alone restores the weights and starts the interrupted epoch again from its first batch. With this
    callback the restored run starts with the batch after the last one the saved weights had trained on;
    Keras's epochs then run across daskfeed's epochs (a Keras epoch is still ``len(seq)`` batches), and
    training stops once as many batches as the uninterrupted run's have been served.

    Parameters
    ----------
    backup_dir : str
        Where the weights, Keras's training state and ``daskfeed_state.json`` are kept (deleted when ``fit``
        ends normally, as Keras does).
    sequence : Sequence
        What ``fit`` trains on, made by :func:`daskfeed.as_sequence` with the same data and knobs each run.
    save_freq, double_checkpoint, delete_checkpoint
        As for ``keras.callbacks.BackupAndRestore``: ``save_freq=N`` saves every N batches.

    Examples
    --------
    >>> seq = daskfeed.as_sequence(x, y, batch_size=128, seed=0)  # doctest: +SKIP
    >>> model.fit(seq, epochs=10, shuffle=False,
    ...           callbacks=[daskfeed.keras.BackupAndRestore("backup", seq, save_freq=500)])  # doctest: +SKIP
    """

    STATE_FILE = "daskfeed_state.json"

    def __init__(
        self,
        backup_dir: str,
        sequence: Sequence,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        if not isinstance(sequence, Sequence):
            raise InputTypeError(
                f"sequence must be the daskfeed.keras.Sequence that fit trains on (from daskfeed.as_sequence), "
                f"got {type(sequence).__name__}"
            )
        super().__init__(
            backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint, delete_checkpoint=delete_checkpoint
        )
        self.sequence = sequence
        self._state_path = os.path.join(backup_dir, self.STATE_FILE)
        self._next = self._epoch_start = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if os.path.exists(self._state_path):
            with open(self._state_path) as f:
                self.sequence.restore(json.load(f))
        self._next = self._epoch_start = self.sequence.position(0)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = self.sequence.position(0)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._next = self._epoch_start + batch + 1  # the place of the next batch to train on
        super().on_train_batch_end(batch, logs)
        if self._next >= self.params["epochs"] * len(self.sequence):
            self.model.stop_training = True  # as many batches as the uninterrupted run: done

    def saved(self) -> None:
        """After Keras wrote its backup of the weights (the weights first: a kill between the two replays
        batches, never skips them), write the place in the data beside it."""
        tmp = self._state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.sequence.state_at(self._next), f)
        os.replace(tmp, self._state_path)

"""glibc's mmap threshold, set back after TensorFlow pins it at 128 KiB.

On Python 3.11, every ``tf.data.Dataset.from_generator`` (``as_dataset``, and Keras's adapter for a
``PyDataset``, so ``fit`` over ``as_sequence`` too) calls ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` when its op is
made: TensorFlow's workaround for a Python 3.11 leak (``ApplyPython311MemoryPatch`` in
``generator_dataset_op.cc``). That fixes the threshold for the whole process and turns off glibc's own rule,
which raises it up to 32 MiB as large buffers are freed. From then on every buffer over 128 KiB is a fresh
``mmap`` that page-faults on first touch and is unmapped on free: a loader's chunk reads, decoded chunks and
batches. Measured on 3 MB chunks: 1.6 million page faults per 1M-sample epoch, the reading threads using 3x
the CPU for the same work, ``as_dataset`` at 218k samples/s where it serves 462k with the threshold set back.

So daskfeed sets the threshold to 8 MiB (and the trim threshold to twice that, as glibc's rule does) where
TensorFlow pins it, once per epoch: when ``as_dataset``'s generator starts an epoch (TensorFlow made that
iterator's op just before), and at the first batch Keras asks of a ``Sequence`` after each epoch began. Chunk
buffers, decoded chunks and batches are then reused from the heap, as in a process without TensorFlow; numpy arrays
of 8 MiB and more (windows, tf.data's blocks) stay ``mmap``-ed, fault in 2 MiB huge pages (numpy asks for them) and
go back to the system when dropped. At 32 MiB, glibc's own ceiling, ``as_dataset`` was no faster (459k against 475k
samples/s), and the soak run's RSS grew 124 MB over 50 epochs (855 -> 979 MB, in steps), where at 8 MiB it stayed
flat (798 -> 819 MB, +0.04 MB per epoch after the fifth; with TensorFlow's 128 KiB, 740 -> 739 MB). The environment
variable ``DASKFEED_MMAP_THRESHOLD`` sets another value in bytes (at most 32 MiB, the most ``mallopt`` takes), or
``0`` to leave glibc as it is; so does setting glibc's own ``MALLOC_MMAP_THRESHOLD_`` (or its ``GLIBC_TUNABLES``
form). A trim threshold set in the environment (``MALLOC_TRIM_THRESHOLD_``, which dask's nanny sets for its
workers) is left as set."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Callable

from daskfeed.errors import InputError

__all__ = ["MMAP_THRESHOLD", "keep_buffers_in_heap", "threshold"]

#: The threshold daskfeed sets by default: above every chunk buffer and batch of usual sizes, below the blocks
#: that kept the heap growing when they were in it (see the module's docs).
MMAP_THRESHOLD = 8 * 2**20
#: glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: the highest its own dynamic threshold goes, and the
#: highest ``mallopt`` accepts.
MAX_MMAP_THRESHOLD = 32 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENV = "DASKFEED_MMAP_THRESHOLD"


def threshold() -> int:
    """The threshold daskfeed sets: ``DASKFEED_MMAP_THRESHOLD`` (bytes, 0 to leave glibc's setting), else 0
    if glibc's own variable sets one, else 8 MiB.
    Read by each new loader (so a bad value fails where the loader is made), used from then on.

    Raises :class:`daskfeed.InputError` (a ValueError) naming the variable when it is not a whole number
    from 0 to 32 MiB.
    """
    global _threshold, _trim
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    # glibc's own variables are a setting of the user's (dask's nanny sets MALLOC_TRIM_THRESHOLD_): leave those
    _trim = "MALLOC_TRIM_THRESHOLD_" not in os.environ and "glibc.malloc.trim_threshold" not in tunables
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        mine = "MALLOC_MMAP_THRESHOLD_" not in os.environ and "glibc.malloc.mmap_threshold" not in tunables
        _threshold = MMAP_THRESHOLD if mine else 0
        return _threshold
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_MMAP_THRESHOLD:
        raise InputError(
            f"environment variable {ENV} must be a whole number of bytes from 0 (leave glibc's setting) to "
            f"{MAX_MMAP_THRESHOLD} (32 MiB), got {raw!r}"
        )
    _threshold = value
    return value


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None on another C library or system."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        return mallopt
    return None


_MALLOPT = _mallopt()
_threshold = MMAP_THRESHOLD
_trim = True  # whether to set the trim threshold too (not when the user's environment sets it)


def keep_buffers_in_heap() -> bool:
    """Set glibc's mmap threshold (see the module's docs) when TensorFlow is imported, so may have pinned it.
    Called by the doors once per epoch, after TensorFlow's op. Returns whether it was set."""
    value = _threshold
    if _MALLOPT is None or value == 0 or "tensorflow" not in sys.modules:
        return False
    # Thread-safe: mallopt takes glibc's arena lock.
    done = bool(_MALLOPT(_M_MMAP_THRESHOLD, value))
    if _trim:
        done = bool(_MALLOPT(_M_TRIM_THRESHOLD, 2 * value)) and done
    return done

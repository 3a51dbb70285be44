"""The exceptions and warnings daskfeed raises; each error also derives from the builtin users would catch anyway."""

from __future__ import annotations

import inspect
import os
import warnings

__all__ = [
    "ChunkReadError",
    "DaskfeedError",
    "DaskfeedWarning",
    "DiskFullError",
    "FastPathWarning",
    "InputError",
    "InputTypeError",
    "LayoutWarning",
    "MemoryBudgetError",
    "OrderWarning",
    "StoreError",
    "warn",
]


class DaskfeedError(Exception):
    """Base class of every error daskfeed raises on purpose."""


class InputError(DaskfeedError, ValueError):
    """An argument has a valid type but a value daskfeed cannot use (lengths, ranges, shapes)."""


class InputTypeError(DaskfeedError, TypeError):
    """An argument has a type or dtype daskfeed cannot use."""


class MemoryBudgetError(InputError):
    """``memory_budget`` is malformed or too small for the data and batch size.

    Attributes
    ----------
    smallest : int or None
        When the budget is too small, the smallest budget that works (bytes), else None.
    """

    def __init__(self, message: str, *, smallest: int | None = None):
        super().__init__(message)
        self.smallest = smallest


class StoreError(InputError):
    """A path or URL given to :func:`daskfeed.open_zarr` is not a readable zarr store, or a store lacks chunk
    files the loader refuses to serve as fill values (``missing_chunks``)."""


class ChunkReadError(DaskfeedError, RuntimeError):
    """Reading or computing one chunk failed; the original exception is the ``__cause__``.

    Attributes
    ----------
    array : str
        The name of the array, as the loader knows it (``"x"``, ``"y['label']"``, ...).
    chunk : int
        Index of the chunk along the sample axis.
    samples : tuple of int
        The ``(start, stop)`` sample range of that chunk.
    """

    def __init__(self, message: str, *, array: str, chunk: int, samples: tuple[int, int]):
        super().__init__(message)
        self.array = array
        self.chunk = chunk
        self.samples = samples


class DaskfeedWarning(UserWarning):
    """Base class of every warning daskfeed gives; filter it with ``warnings.filterwarnings``."""


class FastPathWarning(DaskfeedWarning):
    """daskfeed's own chunk decoding is off for an array: zarr reads it, with the same values but more slowly.

    The message says why (a zarr release daskfeed was not checked on, a codec without a synchronous decode, or a
    decode that disagreed with zarr's own read of the same stored chunk) and which zarr is installed.
    """


class OrderWarning(DaskfeedWarning):
    """Batches are asked for out of plan order (Keras ``fit(shuffle=True)``), so windows are computed again."""


class LayoutWarning(DaskfeedWarning):
    """The store's chunk layout makes the loader decode much more than it serves; the message gives the fix."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[DaskfeedWarning]) -> None:
    """Warn so that the warning points at the first line outside daskfeed (and outside ``threading``)."""
    frame, level = inspect.currentframe().f_back, 2  # level 1 would be this function
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename.endswith("threading.py")
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class DiskFullError(DaskfeedError, OSError):
    """The disk filled up while daskfeed wrote to it; the message names the folder, the space needed, and what
    is kept. ``errno`` is the cause's (``ENOSPC`` or ``EDQUOT``), so code that checks ``OSError.errno`` still works.

    Attributes
    ----------
    folder : str
        The folder being written (``DEST.daskfeed-partial`` for an ingest); the work done so far is kept there.
    needed : int
        Estimated bytes the whole job needs on that disk.
    free : int
        Free bytes on that disk when the error was raised.
    """

    def __init__(self, message: str, *, folder: str, needed: int, free: int, errno: int):
        super().__init__(message)
        self.folder, self.needed, self.free = folder, needed, free
        self.errno, self.strerror, self.filename = errno, os.strerror(errno), folder

    def __str__(self) -> str:
        return str(self.args[0])

"""The exceptions daskfeed raises; each also derives from the builtin users would catch anyway."""

from __future__ import annotations

__all__ = [
    "ChunkReadError",
    "DaskfeedError",
    "InputError",
    "InputTypeError",
    "MemoryBudgetError",
    "StoreError",
]


class DaskfeedError(Exception):
    """Base class of every error daskfeed raises on purpose."""


class InputError(DaskfeedError, ValueError):
    """An argument has a valid type but a value daskfeed cannot use (lengths, ranges, shapes)."""


class InputTypeError(DaskfeedError, TypeError):
    """An argument has a type or dtype daskfeed cannot use."""


class MemoryBudgetError(InputError):
    """``memory_budget`` is malformed or too small for the data and batch size."""


class StoreError(InputError):
    """A path or URL given to :func:`daskfeed.open_zarr` is not a readable zarr store."""


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

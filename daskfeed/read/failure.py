"""Every :class:`daskfeed.ChunkReadError` of the read path is built here: the array, the chunk, its samples, why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from daskfeed.errors import ChunkReadError

__all__ = ["read_failed", "timeout_knob", "waited"]


def read_failed(
    name: str,
    chunks: Sequence[int],
    samples: tuple[int, int] | None,
    why: str,
    cause: BaseException | None = None,
) -> ChunkReadError:
    """The error of a read of array ``name`` that failed.

    ``chunks``: the chunk that failed (one), or the chunks of a read that failed as a whole (several: the first
    ten are named); ``samples``: the first chunk's samples; ``why``: what happened, written after the place. With
    ``cause``, ``why`` ends with its type and text.
    """
    chunks = [int(c) for c in chunks]
    if len(chunks) == 1 and samples is not None:
        place = f"reading array {name} chunk {chunks[0]} (samples {samples[0]}-{samples[1] - 1})"
    elif chunks:
        place = f"reading chunks {chunks[:10]} of array {name}"
    else:
        place = f"reading array {name}"
    if cause is not None:
        why = f"{why}{type(cause).__name__}: {cause}"
    return ChunkReadError(f"{place} {why}", array=name, chunk=chunks[0] if chunks else None, samples=samples)


def waited(err: BaseException | None) -> bool:
    """Whether ``err`` (or its cause) is a timeout or a lost connection: reading again would wait again."""
    while err is not None:
        if isinstance(err, (TimeoutError, asyncio.TimeoutError, ConnectionError)) or "Timeout" in type(err).__name__:
            return True
        err = err.__cause__ or err.__context__
    return False


def timeout_knob(read_timeout_given: Any) -> str:
    """Which knob sets the bound on a chunk fetch, and how to change it."""
    if read_timeout_given:
        return (
            "daskfeed.open_zarr(..., read_timeout=) sets this bound: raise it if big chunks need longer on a slow "
            "link, None waits forever"
        )
    return (
        "the store was not opened with daskfeed.open_zarr, so the default bound applies "
        "(daskfeed.inputs.DEFAULT_READ_TIMEOUT); open it with daskfeed.open_zarr(url, read_timeout=...) to change it"
    )

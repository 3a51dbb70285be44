"""Progress where a person waits: tqdm bars for ingest's phases, and a note before a long first decode."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from dask.utils import format_bytes

__all__ = ["FIRST_DECODE_NOTE_BYTES", "PROGRESS_ENV", "Bar", "first_decode", "first_decode_note", "progress_default"]

#: Decoded bytes from which the first decode of data that fits the budget gets a note (about half a second of
#: decoding on this project's 2-core machine, where 0.92 GiB took 2.3 s).
FIRST_DECODE_NOTE_BYTES = 256 * 2**20
#: How often a bar on a terminal is redrawn while no work is reported (its clock and rate keep moving).
_TICK_SECONDS = 0.5
_BAR_FORMAT = "{desc:<8} {percentage:3.0f}% |{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


#: The environment variable that turns progress on (``1``) or off (``0``) wherever the caller did not say.
PROGRESS_ENV = "DASKFEED_PROGRESS"


def progress_default(stream: Any = None) -> bool:
    """Whether to show progress when the caller did not say: as ``DASKFEED_PROGRESS`` says (``0`` off, ``1``
    on) when it is set; else on when ``stream`` (standard error) is a terminal or a Jupyter kernel shows it,
    off in logs, pipes and CI."""
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    if "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel"):
        return True
    return _terminal(stream)


def _terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (where a line can be redrawn in place)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed stream
        return False


class Bar:
    """A tqdm bar over decoded bytes that several threads move; nothing at all when not ``enabled``.

    On a terminal it is redrawn at least every half second, so its clock runs while a long piece of work is
    in flight; elsewhere (logs) tqdm writes at most one update every few seconds, and the last one on close.
    """

    def __init__(self, label: str, total: int, *, enabled: bool, done: int = 0, stream: Any = None):
        self._lock = threading.Lock()
        self._bar: Any = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        if not enabled:
            return
        from tqdm.std import tqdm

        stream = sys.stderr if stream is None else stream
        tty = _terminal(stream)
        self._bar = tqdm(
            total=max(int(total), 1),
            initial=min(int(done), int(total)),
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=stream,
            mininterval=0.2 if tty else 5.0,
            bar_format=_BAR_FORMAT,
            leave=True,
        )
        if tty:
            self._ticker = threading.Thread(target=self._tick, name="daskfeed-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_SECONDS):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def add(self, nbytes: float) -> None:
        """Count ``nbytes`` more as done (from any thread)."""
        if self._bar is None or nbytes <= 0:
            return
        with self._lock:
            self._bar.update(nbytes)

    def close(self) -> None:
        """Show the last state and stop; idempotent."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_decode_note(
    nbytes: int, memory_budget: int | None = None, seconds: float | None = None, while_served: bool = False
) -> str:
    """The note shown when the loader starts decoding data that fits the budget: before the first batch, or
    (``while_served``) while the first epoch is served from the chunks decoded so far.

    Examples
    --------
    >>> first_decode_note(int(0.92 * 2**30), 2**30, seconds=2.3)  # doctest: +ELLIPSIS
    'decoding 0.92 GiB once, ~2 s, before the first batch: it all fits memory_budget=1.00 GiB, so later epochs ...'
    >>> first_decode_note(int(0.92 * 2**30))  # doctest: +ELLIPSIS
    'decoding 0.92 GiB once, before the first batch: it all fits the memory budget, so later epochs decode nothing'
    >>> first_decode_note(int(0.92 * 2**30), while_served=True)  # doctest: +ELLIPSIS
    'decoding 0.92 GiB once, while the first epoch is served from the chunks decoded so far: it all fits ...'
    """
    eta = f", ~{seconds:.0f} s" if seconds is not None and seconds >= 0.5 else ""
    budget = "the memory budget" if memory_budget is None else f"memory_budget={format_bytes(memory_budget)}"
    when = "before the first batch"
    if while_served:
        when = "while the first epoch is served from the chunks decoded so far"
    return f"decoding {format_bytes(nbytes)} once{eta}, {when}: it all fits {budget}, so later epochs decode nothing"


@contextlib.contextmanager
def first_decode(
    nbytes: int,
    memory_budget: int | None = None,
    *,
    seconds: float | None = None,
    enabled: bool | None = None,
    stream: Any = None,
    while_served: bool = False,
) -> Iterator[None]:
    """Wrap the loader's one decode of data that fits its budget: a one-line note on standard error when it
    is large enough to wait for (``FIRST_DECODE_NOTE_BYTES``), ended with how long it took.

    ``seconds`` is an estimate to show, when the caller has one; ``enabled`` defaults to
    :func:`progress_default`. On a terminal the note and its ending share one line, unless batches are served
    meanwhile (``while_served``: training prints its own progress in between).
    """
    stream = sys.stderr if stream is None else stream
    enabled = progress_default(stream) if enabled is None else enabled
    if not enabled or nbytes < FIRST_DECODE_NOTE_BYTES:
        yield
        return
    tty = _terminal(stream) and not while_served
    note = first_decode_note(nbytes, memory_budget, seconds, while_served)
    print(f"daskfeed: {note} ...", end="" if tty else "\n", file=stream)
    stream.flush()
    started = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        took = time.perf_counter() - started
        end = f"decoded in {took:.1f} s" if ok else "stopped"
        print(f" {end}" if tty else f"daskfeed: {end}", file=stream, flush=True)

"""Checkpointable position: a loader's place in its stream of batches, as a few integers and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from daskfeed.errors import InputError, InputTypeError
from daskfeed.inputs import Inputs
from daskfeed.plan import FIRST_WINDOW_CHUNKS, PlanConfig

__all__ = ["STATE_VERSION", "Position", "check_state", "fingerprint", "make_state"]

STATE_VERSION = 1


class Position(NamedTuple):
    """Where a loader is in its stream of batches: the epoch, and the next batch of it to serve.

    The loader holds the one position (:attr:`daskfeed.Loader.position`); its doors and callbacks ask it
    rather than counting for themselves. ``next_batch`` runs from 0 to the epoch's batch count (all served).
    """

    epoch: int
    next_batch: int

    def index(self, n_batches: int) -> int:
        """The place in the stream of batches of every epoch: ``epoch * n_batches + next_batch``."""
        return self.epoch * n_batches + self.next_batch

    @classmethod
    def at(cls, index: int, n_batches: int) -> Position:
        """The position of place ``index`` in the stream of batches (the inverse of :meth:`index`)."""
        return cls(*divmod(int(index), n_batches))


def fingerprint(inputs: Inputs, config: PlanConfig, geometry: Any = None, starts_small: bool = False) -> str:
    """A digest of everything batch ``i`` of epoch ``e`` depends on: the arrays' names, shapes, dtypes and
    chunking, the plan (seed, batch size, shuffle, read units, reads per chunk, window size, shard, whether epoch
    0 starts with small windows: :attr:`daskfeed.plan.EpochPlan.starts_small`), and what a sample is (``window``
    and ``stride``, when given)."""
    described = {
        "leaves": [[leaf.name, list(leaf.array.shape), str(leaf.dtype)] for leaf in inputs.leaves],
        "structure": [[role, list(keys) if keys else None] for role, keys in inputs.structure],
        "bounds": config.chunk_bounds.tolist(),
        "plan": [
            config.batch_size,
            config.seed,
            config.shuffle,
            config.drop_remainder,
            config.reads_per_chunk,
            config.window_samples,
            list(config.shard),
            config.resident,
        ],
    }
    if config.progressive:  # left out otherwise, so that states taken before it existed still restore
        described["progressive"] = True
    if starts_small and config.shuffle:  # without a shuffle the windows' cut changes no batch
        described["first_window_reads"] = FIRST_WINDOW_CHUNKS
    if config.subset is not None:  # a part of a split: another part's state is another loader's
        described["subset"] = config.subset.describe()
    if geometry is not None:  # left out otherwise, so that states taken before window= existed still restore
        described["samples"] = [
            sorted(geometry.window.items()),
            sorted(geometry.stride.items()),
            config.window_rows,
            config.sample_rows,
        ]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def make_state(digest: str, position: Position) -> dict[str, Any]:
    """``{"version", "epoch", "next_batch", "fingerprint"}``: JSON-able, a few dozen bytes."""
    epoch, next_batch = position
    return {"version": STATE_VERSION, "epoch": int(epoch), "next_batch": int(next_batch), "fingerprint": digest}


def check_state(state: Any, digest: str, n_batches: int) -> Position:
    """``(epoch, next_batch)`` of ``state``, once it is known to come from a loader that serves these batches."""
    if not isinstance(state, Mapping):
        raise InputTypeError(f"state must be the dict that loader.state() returned, got {type(state).__name__}")
    missing = {"version", "epoch", "next_batch", "fingerprint"} - set(state)
    if missing:
        raise InputError(f"state is missing {', '.join(sorted(missing))}; pass the dict that loader.state() returned")
    if state["version"] != STATE_VERSION:
        raise InputError(f"state has version {state['version']!r}; this daskfeed reads version {STATE_VERSION}")
    if state["fingerprint"] != digest:
        raise InputError(
            "state was taken from a loader over other data or with other knobs (seed, batch_size, shuffle, "
            "memory_budget, reads_per_chunk, shard, ...), so its batches would differ; make the loader as it was, "
            f"or start afresh (fingerprint {state['fingerprint']!r}, this loader's {digest!r})"
        )
    epoch, next_batch = state["epoch"], state["next_batch"]
    if not (isinstance(epoch, int) and epoch >= 0 and isinstance(next_batch, int) and 0 <= next_batch <= n_batches):
        raise InputError(
            f"state has epoch={epoch!r}, next_batch={next_batch!r}; expected ints, 0 <= next_batch <= {n_batches}"
        )
    return Position(epoch, next_batch)

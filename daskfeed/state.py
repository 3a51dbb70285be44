"""Checkpointable position: a loader's place in its stream of batches, as a few integers and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from daskfeed.errors import InputError, InputTypeError
from daskfeed.inputs import Inputs
from daskfeed.plan import PlanConfig

__all__ = ["STATE_VERSION", "check_state", "fingerprint", "make_state"]

STATE_VERSION = 1


def fingerprint(inputs: Inputs, config: PlanConfig, geometry: Any = None) -> str:
    """A digest of everything batch ``i`` of epoch ``e`` depends on: the arrays' names, shapes, dtypes and
    chunking, the plan (seed, batch size, shuffle, read units, reads per chunk, window size, shard), and what a
    sample is (``window`` and ``stride``, when given)."""
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


def make_state(digest: str, epoch: int, next_batch: int) -> dict[str, Any]:
    """``{"version", "epoch", "next_batch", "fingerprint"}``: JSON-able, a few dozen bytes."""
    return {"version": STATE_VERSION, "epoch": int(epoch), "next_batch": int(next_batch), "fingerprint": digest}


def check_state(state: Any, digest: str, n_batches: int) -> tuple[int, int]:
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
    return epoch, next_batch

"""Train Keras and TensorFlow models on chunked arrays larger than RAM: shuffled batches from zarr and dask."""

from __future__ import annotations

from typing import Any

from daskfeed.errors import (
    ChunkReadError,
    DaskfeedError,
    DaskfeedWarning,
    DiskFullError,
    FastPathWarning,
    InputError,
    InputTypeError,
    LayoutWarning,
    MemoryBudgetError,
    OrderWarning,
    StoreError,
)
from daskfeed.inputs import open_zarr
from daskfeed.layout import Layout
from daskfeed.loader import Loader
from daskfeed.options import DEFAULT_MEMORY_BUDGET, LoaderOptions, Shard, parse_bytes
from daskfeed.parts import Part, split
from daskfeed.tools.bench import BenchResult, bench
from daskfeed.tools.info import StoreInfo, info
from daskfeed.tools.ingest import IngestReport, ingest

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "BenchResult",
    "ChunkReadError",
    "DaskfeedError",
    "DaskfeedWarning",
    "DiskFullError",
    "FastPathWarning",
    "IngestReport",
    "InputError",
    "InputTypeError",
    "Layout",
    "LayoutWarning",
    "Loader",
    "LoaderOptions",
    "MemoryBudgetError",
    "OrderWarning",
    "Part",
    "Shard",
    "StoreError",
    "StoreInfo",
    "__version__",
    "as_dataset",
    "as_sequence",
    "bench",
    "info",
    "ingest",
    "open_zarr",
    "parse_bytes",
    "split",
]

# The front-ends import Keras / TensorFlow; load them on first use so `import daskfeed` stays cheap.
_LAZY = {"as_sequence": "daskfeed.keras", "as_dataset": "daskfeed.tf"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as err:  # say which extra (or Keras backend) the front-end needs
            missing = (err.name or "").partition(".")[0]
            if missing not in ("tensorflow", "keras"):
                raise
            if name == "as_dataset":
                message = (
                    "daskfeed.as_dataset needs TensorFlow, which is not installed: pip install daskfeed[tf]. "
                    "daskfeed.as_sequence (a keras.utils.PyDataset) works on any Keras 3 backend, JAX and "
                    "PyTorch too: pip install daskfeed[keras] jax (or torch)"
                )
            elif missing == "keras":
                message = (
                    "daskfeed.as_sequence needs Keras 3, which is not installed: pip install daskfeed[keras] "
                    "and a backend (jax, torch or tensorflow), or pip install daskfeed[tf]"
                )
            else:
                message = (
                    "daskfeed.as_sequence imports Keras, whose backend is TensorFlow, which is not installed: "
                    "set KERAS_BACKEND=jax or KERAS_BACKEND=torch (that package installed) before Keras is "
                    "imported, or pip install daskfeed[tf]"
                )
            raise ModuleNotFoundError(message, name=err.name) from err
        return getattr(module, name)
    raise AttributeError(f"module 'daskfeed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""as_dataset: the tf.data front-end (importing this module imports TensorFlow)."""

from __future__ import annotations

import weakref
from typing import Any

import tensorflow as tf

from daskfeed import heap
from daskfeed.errors import DaskfeedError
from daskfeed.loader import Loader
from daskfeed.transform import flatten_batch

__all__ = ["as_dataset"]

#: Samples per block handed to tf.data: cutting large blocks with ``rebatch`` runs in C++ (DESIGN.md).
BLOCK_SAMPLES = 8192
#: ...but no block larger than this.
BLOCK_BYTES = 32 * 2**20


def as_dataset(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    **knobs: Any,
) -> tf.data.Dataset:
    """Serve shuffled batches of chunked arrays as a ``tf.data.Dataset``; each iteration is the next epoch.

    The parameters are those of :func:`daskfeed.as_sequence` less the three Keras ones: ``**knobs`` are the
    fields of :class:`daskfeed.LoaderOptions` (or ``options=`` one), written and documented there only; for one
    seed both front-ends give the same batches.
    The dataset's ``element_spec`` is complete (the batch dimension is ``None`` unless ``drop_remainder``)
    and its cardinality is the number of batches per epoch.

    Parameters
    ----------
    shard : tuple of (int, int) or tf.distribute.InputContext, optional
        ``(index, count)``: serve this worker's share of the read units (see :class:`daskfeed.LoaderOptions`).
        Inside ``strategy.distribute_datasets_from_function(fn)``, pass ``fn``'s ``InputContext`` itself.
        Not given: the whole epoch, in every process (also in a multi-process JAX job, where the other doors
        take the process's share: Keras's ``keras.distribution`` shards a ``tf.data.Dataset`` itself).

    Returns
    -------
    tf.data.Dataset
        Elements ``x``, ``(x, y)`` or ``(x, y, sample_weight)``, dicts kept as dicts.

    Notes
    -----
    Batches are made in blocks of about 8,192 samples (at most 32 MiB) that tf.data cuts with ``rebatch``;
    those blocks, and tf.data's own prefetch of two batches, come on top of ``memory_budget``.

    Under ``tf.distribute`` a dataset of a shard of several (``count > 1``) carries the auto-shard policy
    ``OFF``: ``experimental_distribute_dataset`` does not cut it again, and each step splits this worker's
    batch between its replicas, so pass the global batch size as ``batch_size`` there (inside
    ``distribute_datasets_from_function``, ``ctx.get_per_replica_batch_size(global_batch)``). A dataset of the
    whole epoch carries ``DATA`` (what ``AUTO`` comes to for a generator, without ``AUTO``'s warning about
    ``assert_cardinality``): ``MultiWorkerMirroredStrategy`` then keeps every N-th piece of each batch on each
    of N workers, so each sample is trained on once, but every worker reads and decodes the whole epoch.
    Every shard needs the same ``seed``. Shards are whole read units, so one worker may have a batch more
    than another; ``tf.distribute`` ends the epoch for all together, giving the others empty batches.

    Examples
    --------
    >>> import numpy as np, daskfeed
    >>> x, y = np.random.rand(100, 4).astype("f4"), np.arange(100) % 2
    >>> ds = daskfeed.as_dataset(x, y, batch_size=32, seed=0)
    >>> int(ds.cardinality()), ds.element_spec[0]
    (4, TensorSpec(shape=(None, 4), dtype=tf.float32, name=None))
    >>> ds.options().experimental_distribute.auto_shard_policy
    <AutoShardPolicy.DATA: 2>
    """
    if knobs.get("shard") is None and "options" not in knobs:
        # not the JAX default of the other doors: whoever distributes a tf.data.Dataset shards it
        knobs["shard"] = (0, 1)
    loader = Loader(x, y, sample_weight, **knobs)
    return dataset_from_loader(loader)


def dataset_from_loader(loader: Loader) -> tf.data.Dataset:
    """The ``tf.data.Dataset`` of a :class:`daskfeed.Loader`: each iteration serves the epoch the loader's
    position says (:meth:`daskfeed.Loader.start_pass`): its current epoch while none of its batches was handed
    out, else the next."""
    if loader.options.transform is not None:
        return _transformed_dataset(loader)
    batch = loader.batch_size
    drop = loader.options.drop_remainder
    served = loader.served  # a sample cut by window= has the window's shape
    signature = loader.inputs.pack(
        [tf.TensorSpec((None, *leaf.sample_shape), tf.as_dtype(leaf.dtype)) for leaf in served]
    )
    per_sample = sum(leaf.bytes_per_sample for leaf in served)
    per_block = max(1, min(BLOCK_SAMPLES // batch, BLOCK_BYTES // max(1, batch * per_sample)))
    # TensorFlow keeps the generator of every from_generator for the life of the process (tensorflow#57690):
    # it holds the loader weakly, and the dataset (which each iterator of it keeps) holds it, so a dataset
    # that is dropped frees its loader, its windows and its threads.
    weak = weakref.ref(loader)

    def generate():
        loader, epoch = _start_pass(weak)
        yield from loader.blocks(epoch, per_block)  # an error is kept as loader.error: TensorFlow raises its own

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    ds = ds.rebatch(batch, drop_remainder=drop)
    return _finish(ds, loader)


def _start_pass(weak: weakref.ref) -> tuple[Loader, int]:
    """What a dataset's generator does first, once per iteration: its loader and the epoch the loader's
    position says this pass serves (the next, once any batch of the current one was handed out), with
    glibc's heap set back (TensorFlow made this iterator's op just before, which pins it)."""
    loader = weak()
    if loader is None:  # only when the dataset itself was dropped and TensorFlow still runs its op
        raise DaskfeedError("the loader of this dataset was freed; keep the dataset while iterating it")
    epoch = loader.start_pass()
    heap.keep_buffers_in_heap()
    return loader, epoch


def _finish(ds: tf.data.Dataset, loader: Loader) -> tf.data.Dataset:
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(loader)))
    ds = ds.prefetch(2)
    # tf.distribute would cut a shard again and keep 1/N of it (the default policy, AUTO, shards by data here):
    # a sharded dataset says OFF. An unsharded one says DATA, which AUTO falls back to for a generator anyway,
    # without AUTO's attempt to shard by file, which warns that it drops assert_cardinality from the graph.
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if loader.options.shard.count > 1 else policy.DATA
    ds = ds.with_options(options)
    ds.loader = loader  # its error (loader.error), stats and close(); datasets made from this one keep it too
    return ds


def _transformed_dataset(loader: Loader) -> tf.data.Dataset:
    """The dataset of a loader with ``transform=``: each transformed batch as it is (a transform may change the
    shapes, so batches are not made in blocks and cut again). The ``element_spec`` is that of the transformed
    batch 0 of the loader's current epoch (made once here), with the batch axis left open."""
    leaves = loader.inputs.structure
    probe = flatten_batch(leaves, loader.batch(0, loader.epoch), "batch 0")
    specs = [tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in probe]
    signature = loader.inputs.pack(specs)
    weak = weakref.ref(loader)  # as in dataset_from_loader: a dropped dataset frees its loader

    def generate():
        loader, epoch = _start_pass(weak)
        for index, batch in enumerate(loader.batches(epoch)):  # their errors are kept as loader.error
            flat = flatten_batch(leaves, batch, f"batch {index} of epoch {epoch}")
            for spec, a in zip(specs, flat):
                if a.shape[1:] != tuple(spec.shape[1:]) or tf.as_dtype(a.dtype) != spec.dtype:
                    error = DaskfeedError(
                        f"transform returned a leaf of shape {a.shape} and dtype {a.dtype} for batch {index} of "
                        f"epoch {epoch}, but batch 0 had {tuple(spec.shape)} and {spec.dtype.name}: as_dataset "
                        "needs every batch to keep the shapes after the batch axis (and the dtypes) of batch 0"
                    )
                    loader._keep(error)  # TensorFlow raises its own error with this text
                    raise error
            yield batch

    return _finish(tf.data.Dataset.from_generator(generate, output_signature=signature), loader)

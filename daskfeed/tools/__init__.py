"""The tools beside the loader, behind ``daskfeed.ingest``, ``daskfeed.info``, ``daskfeed.bench`` and the
``daskfeed`` command (:mod:`daskfeed.cli`): ``ingest`` writes a store (its work folder and crash-safe commit),
``sources`` reads what it is given (.npy, HDF5, images, xarray), ``info`` describes a store and the loader it
would get, ``bench`` measures a loader against zarr's own read, ``progress`` draws their bars (tqdm).

Nothing in the loader's core imports these, except the first-decode progress bar (``progress.first_decode``).
"""

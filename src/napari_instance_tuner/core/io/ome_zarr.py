"""OME-Zarr (OME-NGFF) label images, written chunk by chunk from labels of any size.

The group is a multiscale *image-label* (NGFF "labels" specification): arrays "0", "1", ... (level k takes
every 2**k-th row and column, nearest neighbour, so the ids stay exact), ``multiscales`` with physical
``scale`` transforms in micrometres when the pixel size is known, and ``image-label`` metadata. With zarr 3
(the version in use) the metadata is NGFF 0.5, under the ``ome`` attribute; with zarr 2 it is NGFF 0.4.

Written here rather than with ``ome-zarr-py``: that package's current release requires
``ome-zarr-models``, which pins ``pydantic<2.13`` and would downgrade napari's pydantic; the metadata is
small and fixed by the specification (https://ngff.openmicroscopy.org/0.5/), and the tests read the result
back with ``ome-zarr-py``'s reader where it is installed.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress
from .pyramid import write_label_pyramid

__all__ = ["write_label_group"]


def _metadata(count: int, pixel_size_um: float | None, name: str, zarr_format: int) -> dict:
    unit = {"unit": "micrometer"} if pixel_size_um is not None else {}
    size = float(pixel_size_um) if pixel_size_um is not None else 1.0
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [size * 2**k] * 2}]}
                for k in range(count)]
    multiscale = {"name": name, "axes": axes, "datasets": datasets, "type": "nearest"}
    label: dict = {}  # standalone labels: no "source" image to point at (the key is optional)
    if zarr_format >= 3:
        return {"ome": {"version": "0.5", "multiscales": [multiscale], "image-label": label}}
    return {"multiscales": [{"version": "0.4", **multiscale}], "image-label": {"version": "0.4", **label}}


def write_label_group(
    path: str | os.PathLike,
    labels: Any,
    pixel_size_um: float | None = None,
    *,
    chunk: int = 1024,
    min_size: int = 256,
    name: str = "instances",
) -> Generator[Progress, None, Path]:
    """Write (H, W) labels as an OME-Zarr multiscale image-label group; yields progress, returns the path.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder (replaced if it exists).
    labels : array-like
        Integer (H, W) labels (NumPy, zarr, dask, or a lazy view such as
        :class:`~..inference.resample.UpscaledLabels`): read ``chunk`` x ``chunk`` at a time.
    pixel_size_um : float, optional
        µm per level-0 pixel, written as the scale of level 0 (level k: ``pixel_size_um * 2**k``).
    chunk : int
        Zarr chunk edge of every level.
    min_size : int
        Levels are added while the longest side of the last is larger than this (at least 2 levels).
    name : str
        The multiscale's name.

    Returns
    -------
    Path
        The group written: uint32 arrays "0", "1", ..., with NGFF metadata (0.5 with zarr 3, else 0.4).
    """
    import zarr

    path = Path(path)
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    root = zarr.open_group(str(path), mode="w")
    chunks = (min(chunk, shape[0]), min(chunk, shape[1]))
    level0 = root.create_array("0", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)
    rows, cols = range(0, shape[0], chunks[0]), range(0, shape[1], chunks[1])
    total = len(rows) * len(cols)
    for i, y0 in enumerate(rows):
        for x0 in cols:
            y1, x1 = min(shape[0], y0 + chunks[0]), min(shape[1], x0 + chunks[1])
            block = labels[y0:y1, x0:x1]
            block = np.asarray(block.compute() if hasattr(block, "compute") else block)
            if block.any():
                level0[y0:y1, x0:x1] = block.astype(np.uint32, copy=False)
        yield Progress((i + 1) * len(cols), total, "OME-Zarr level 0")
    levels = yield from write_label_pyramid(root, min_size=min_size, min_levels=2)
    fmt = int(getattr(root.metadata, "zarr_format", 3))
    attrs = _metadata(len(levels), pixel_size_um, name, fmt)
    root.attrs.update(attrs)  # replaces the plain multiscales write_label_pyramid wrote
    return path

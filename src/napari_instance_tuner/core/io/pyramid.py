"""Multiscale label pyramids, and when an image is too large to segment in memory.

A streamed segmentation (:func:`..inference.streaming.stream_segment`) writes its labels to a zarr array that may not fit
in memory. A viewer shows such labels as a multiscale (pyramid) layer, whose level k takes every 2**k-th row
and column of level 0 (nearest neighbour, so the ids stay exact):

* :func:`write_label_pyramid` writes levels 1, 2, ... once, chunk by chunk, as arrays "1", "2", ... of the
  zarr group whose array "0" is level 0 (the OME-NGFF layout: ``out=<group>/0`` for ``stream_segment``).
  Drawing the smallest level then reads only that small array, not every chunk of level 0.
* :func:`pyramid_shapes` gives the levels' shapes.

:func:`needs_streaming` is the rule that decides between a whole-image run with cached maps and a streamed,
tile-by-tile run.

Headless: numpy, zarr and (lazily) dask; no Qt, magicgui or napari.

Example
-------
>>> pyramid_shapes((2000, 1200), min_size=512)
[(2000, 1200), (1000, 600), (500, 300)]
>>> from napari_instance_tuner.core.progress import run
>>> levels = run(write_label_pyramid("slide_labels.zarr", min_size=512))  # doctest: +SKIP
>>> [level.shape for level in levels]  # doctest: +SKIP
[(40000, 52000), (20000, 26000), ..., (313, 407)]
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from ..errors import InputImageError
from ..inference.stack import slice_count
from ..progress import CancelToken, Progress

#: Name of level 0's array in a pyramid group; level k is the array ``str(k)`` (as in OME-NGFF).
LEVEL0 = "0"


def pyramid_shapes(shape: tuple[int, ...], min_size: int = 512, min_levels: int = 1) -> list[tuple[int, int]]:
    """The (H, W) shapes of the levels of a label pyramid of (H, W) labels, largest first.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of level 0.
    min_size : int
        Levels are added while the longest side of the last one is larger than this.
    min_levels : int
        Fewest levels, even when that goes below ``min_size`` (napari's multiscale layers need 2).

    Returns
    -------
    list of (int, int)
        ``(ceil(H / 2**k), ceil(W / 2**k))`` for k = 0, 1, ...: levels are added while the longest side of
        the last one is larger than ``min_size``, or while there are fewer than ``min_levels``.

    Raises
    ------
    InputImageError
        If ``shape`` is not 2D.
    ValueError
        If ``min_size`` or ``min_levels`` is smaller than 1.
    """
    if int(min_size) < 1 or int(min_levels) < 1:
        raise ValueError(f"min_size and min_levels must be at least 1, got {min_size} and {min_levels}")
    if len(shape) != 2:
        raise InputImageError(f"a label pyramid needs (H, W) labels, got shape {tuple(shape)}")
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > int(min_size) or len(shapes) < int(min_levels):
        height, width = shapes[-1]
        shapes.append((-(-height // 2), -(-width // 2)))
    return shapes


def write_label_pyramid(
    group: Any,
    min_size: int = 512,
    min_levels: int = 1,
    *,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, list]:
    """Write levels 1, 2, ... of a label pyramid beside level 0 in a zarr group, chunk by chunk; yields progress.

    Level k is ``level0[::2**k, ::2**k]`` (nearest neighbour: every id in it exists in level 0), computed as
    every second row and column of level k-1. Each level is written one output chunk at a time: a chunk
    reads the (at most 2 x 2) chunks of the level before that it covers, so memory holds a few chunks,
    never a whole level, and level 0 is read once.

    Parameters
    ----------
    group : path or zarr.Group
        A zarr group whose array :data:`LEVEL0` ("0") holds the integer (H, W) labels of level 0 (any
        integer dtype; e.g. what :func:`..inference.streaming.stream_segment` wrote with ``out=<group path>/0``). A
        path whose folder holds the array "0" but no group metadata yet is made a group.
    min_size, min_levels : int
        How many levels (see :func:`pyramid_shapes`): added while the longest side of the last level is
        larger than ``min_size`` or there are fewer than ``min_levels`` (napari's multiscale layers need 2).
    cancel : CancelToken, optional
        Checked before every chunk; on cancellation the group is left half-written (delete it).

    Yields
    ------
    Progress
        ``done`` / ``total`` chunks written over all levels.

    Returns
    -------
    list of zarr.Array
        ``[level 0, level 1, ...]``: the group's arrays "0", "1", ... on disk, of shapes
        ``(ceil(H / 2**k), ceil(W / 2**k))``, level 0's dtype and chunks (clipped to the level's shape).
        Arrays "k" of an earlier, deeper pyramid in the group are deleted; the group's attributes get
        OME-NGFF ``multiscales`` metadata (scale 2**k per level).

    Raises
    ------
    InputImageError
        If the group has no array "0", or it is not 2D.
    ValueError
        If ``min_size`` or ``min_levels`` is smaller than 1.
    """
    import zarr

    root = group if isinstance(group, zarr.Group) else zarr.open_group(str(os.fspath(group)), mode="a")
    if LEVEL0 not in set(root.array_keys()):
        raise InputImageError(f"{root.store} has no array {LEVEL0!r} (level 0 of a label pyramid)")
    base = root[LEVEL0]
    shapes = pyramid_shapes(tuple(base.shape), min_size, min_levels)
    for key in list(root.array_keys()):
        if key.isdigit() and key != LEVEL0 and int(key) >= len(shapes):
            del root[key]  # a level of an earlier, deeper pyramid
    chunks = tuple(int(c) for c in base.chunks)
    grids = [(range(0, h, min(chunks[0], h) or 1), range(0, w, min(chunks[1], w) or 1)) for h, w in shapes[1:]]
    total, done = sum(len(rows) * len(cols) for rows, cols in grids), 0
    yield Progress(0, total, "label pyramid")
    levels = [base]
    for k, (shape, (rows, cols)) in enumerate(zip(shapes[1:], grids), start=1):
        source = levels[-1]
        step = (rows.step, cols.step)
        level = root.create_array(str(k), shape=shape, chunks=step, dtype=base.dtype, fill_value=0,
                                  overwrite=True)
        for y0 in rows:
            y1 = min(shape[0], y0 + step[0])
            for x0 in cols:
                if cancel is not None:
                    cancel.check()
                x1 = min(shape[1], x0 + step[1])
                level[y0:y1, x0:x1] = source[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2]
                done += 1
                yield Progress(done, total, f"label pyramid level {k}/{len(shapes) - 1}")
        levels.append(level)
    _multiscales(root, len(levels))
    return levels


def _multiscales(root: Any, count: int) -> None:
    """OME-NGFF ``multiscales`` attributes for levels "0" .. str(count - 1) (0.5 for zarr v3, else 0.4)."""
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
                for k in range(count)]
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    multiscale = {"axes": axes, "datasets": datasets, "type": "nearest"}
    if int(getattr(root.metadata, "zarr_format", 3)) >= 3:
        root.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale]}})
    else:
        root.attrs.update({"multiscales": [{"version": "0.4", **multiscale}]})


def needs_streaming(shape: tuple[int, ...], multiscale: bool, limit_pixels: int, *, rgb: bool = False) -> bool:
    """Whether an image layer is segmented tile by tile (streamed) rather than whole with cached maps.

    Parameters
    ----------
    shape : tuple of int
        The layer's data shape (of level 0 for a multiscale layer): (H, W), (H, W, C) with C <= 4, or a stack
        (Z, H, W) / (Z, H, W, C).
    multiscale : bool
        Whether the layer is a multiscale (pyramid) layer; such an image is always streamed.
    limit_pixels : int
        Largest H * W segmented whole; larger 2D images are streamed.
    rgb : bool
        Whether the last axis holds colour channels (napari's ``rgb``).

    Returns
    -------
    bool
        True for a 2D image (with or without channels) that is multiscale or has more than ``limit_pixels``
        pixels. Stacks are never streamed: they run slice by slice in memory (a multiscale stack from its
        level 0).

    Raises
    ------
    InputImageError
        For shapes that are neither a 2D image nor a stack (see :func:`..inference.stack.slice_count`).
    """
    if slice_count(tuple(shape), rgb) is not None:
        return False
    height, width = int(shape[0]), int(shape[1])
    return bool(multiscale) or height * width > int(limit_pixels)

"""Streaming tiled segmentation of images larger than memory, for every family.

The image is read lazily (a tiled TIFF / OME-TIFF / pyramidal slide through ``tifffile``'s zarr store, a
zarr or dask array, a napari multiscale list, or a NumPy array) one window at a time; each window (a core of
``tile`` pixels plus a ``halo``) goes through the family's own ``predict_maps`` and ``postprocess``, and the
objects are stitched across tile borders by :mod:`.stitch` into a uint32 label array (zarr on disk, or
NumPy). Only one window's maps exist at a time; they are dropped once the window is post-processed.

Normalisation uses statistics of the *whole* image (the same percentile sample a whole-image run takes), so
every tile sees the same intensity mapping. On CUDA out-of-memory the network tile is halved and the tile
retried, with a progress message saying so.

The parts: lazy reading and whole-image normalisation in :mod:`.lazy_image`; one window (network with
out-of-memory retries, post-processing) in :mod:`.stream_tile`; the overlapped loop in :mod:`.stream_pipeline`;
this module runs the whole image and re-exports the names of the other three.

Example
-------
>>> from napari_instance_tuner.core.progress import run
>>> result = run(stream_segment(loaded, "slide.ome.tif", params, out="slide_labels.zarr"))  # doctest: +SKIP
>>> result.labels.shape, result.count  # doctest: +SKIP
((40000, 52000), 18234)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..family import Instances
from ..progress import CancelToken, Progress, relay
from ..sparse_masks import SparseMasks
from .lazy_image import Normaliser, TiffImage, fit_normaliser, image_shape, open_image, read_window
from .predict import choose_device
from .stitch import Stitcher, TileResult
from .stream_pipeline import auto_threads, pipelined_tiles
from .stream_tile import StreamSettings, inference_autocast, oom_only, predict_window, segment_tile

__all__ = [
    "Normaliser", "StreamResult", "StreamSettings", "TiffImage", "create_labels", "fit_normaliser", "image_shape",
    "inference_autocast", "open_image", "predict_window", "read_window", "segment_tile", "stitched_instances",
    "stream_segment",
]


# -- the whole image -----------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """A stitched segmentation.

    Attributes
    ----------
    labels : array-like
        uint32 (H, W) labels (a zarr array when written to disk).
    count : int
        Number of objects.
    objects : list of StitchedObject or None
        Per-object masks (boxes, bool crops, scores) when asked for (families whose objects overlap).
    tiles : int
        Number of tiles run.
    """

    labels: Any
    count: int
    objects: list | None
    tiles: int


def create_labels(out: str | os.PathLike | None, shape: tuple[int, int], chunk: int = 1024):
    """A zero-filled uint32 label array: zarr at ``out`` (overwritten), or NumPy when ``out`` is None."""
    if out is None:
        return np.zeros(shape, np.uint32)
    import zarr

    chunks = (min(chunk, shape[0]), min(chunk, shape[1]))
    return zarr.open_array(str(out), mode="w", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)


def stream_segment(
    loaded: Any,
    image: Any,
    params: Any,
    *,
    out: str | os.PathLike | None = None,
    settings: StreamSettings | None = None,
    device: str | None = None,
    keep_objects: bool = False,
    cancel: CancelToken | None = None,
    tile_runner: Callable | None = None,
    tile_filter: Callable[[tuple[int, int, int, int]], bool] | None = None,
) -> Generator[Progress, None, StreamResult]:
    """Segment an image of any size tile by tile and stitch the instances; yields progress.

    Parameters
    ----------
    loaded : LoadedModel
        ``family``, ``model`` and ``meta`` are used.
    image : path, array-like or list
        See :func:`open_image`.
    params : dataclass
        The family's post-processing parameters.
    out : path, optional
        Zarr array to write (overwritten); NumPy in memory when None.
    settings : StreamSettings, optional
    device : str, optional
        torch device (``"auto"``/None chooses).
    keep_objects : bool
        Return every object's mask in ``objects`` (families whose objects overlap).
    cancel : CancelToken, optional
    tile_runner : callable, optional
        ``tile_runner(grid, normaliser, indices) -> iterator of TileResult`` (any order) to run tiles elsewhere
        (e.g. on dask workers, see :func:`.batch.tile_task`); the default runs them here: in order on this
        thread with ``settings.threads == 1``, else overlapped with a thread pool (:mod:`.stream_pipeline`).
    tile_filter : callable, optional
        ``tile_filter((y0, x0, y1, x1)) -> bool`` on a tile's core (image pixels): False = the tile is never
        read nor sent to the network and has no objects (e.g. no tissue, see :mod:`.tissue`).
    """
    settings = settings or StreamSettings()
    device = choose_device(device)
    source = open_image(image)
    try:
        return (yield from _stream(loaded, source, params, out, settings, device, keep_objects, cancel, tile_runner,
                                   tile_filter))
    finally:
        if isinstance(source, TiffImage) and source is not image:
            source.close()


def _stream(loaded, source, params, out, settings, device, keep_objects, cancel, tile_runner, tile_filter):
    grid = settings.grid(image_shape(source))
    yield Progress(0, len(grid), "normalisation statistics")
    normaliser = fit_normaliser(source, loaded.meta)
    labels = create_labels(out, grid.shape)
    stitcher = Stitcher(labels, grid, keep_objects=keep_objects)
    total = len(grid)
    run = [i for i in range(total) if tile_filter is None or tile_filter(grid.core(i))]
    for index in sorted(set(range(total)) - set(run)):
        stitcher.add(TileResult(index))  # no tissue: no objects
    threads = auto_threads(settings.threads)
    if tile_runner is not None:
        for done, result in enumerate(tile_runner(grid, normaliser, run), start=total - len(run) + 1):
            stitcher.add(result)
            yield Progress(done, total, f"tile {done}/{total}")
    elif threads > 1:
        yield from pipelined_tiles(loaded, params, source, grid, normaliser, settings, stitcher, threads,
                                   device=device, cancel=cancel, indices=run)
    else:
        state: dict = {}
        for index in run:
            if cancel is not None:
                cancel.check()
            gen = segment_tile(loaded.family, loaded.model, loaded.meta, params, source, grid, index, normaliser,
                               settings, state, device=device, cancel=cancel)
            stitcher.add((yield from relay(gen, lambda p, i=index: oom_only(p, i, total))))
            yield Progress(index + 1, total, f"tile {index + 1}/{total}")
    count = stitcher.finish()
    return StreamResult(labels, count, stitcher.objects if keep_objects else None, len(run))


def stitched_instances(result: StreamResult) -> Instances:
    """A small stitched result as :class:`~..family.Instances` (the labels are read whole: images that fit)."""
    labels = np.asarray(result.labels[:]) if not isinstance(result.labels, np.ndarray) else result.labels
    if result.objects is None:
        return Instances(labels=labels)
    objects = SparseMasks.from_crops([(o.box[0], o.box[1], o.mask) for o in result.objects], labels.shape)
    scores = [o.score for o in result.objects]
    return Instances(labels=labels, objects=objects,
                     scores=None if any(s is None for s in scores) else np.asarray(scores, np.float32))

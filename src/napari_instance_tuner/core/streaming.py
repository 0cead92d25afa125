"""Streaming tiled segmentation of images larger than memory, for every family.

The image is read lazily (a tiled TIFF / OME-TIFF / pyramidal slide through ``tifffile``'s zarr store, a
zarr or dask array, a napari multiscale list, or a NumPy array) one window at a time; each window (a core of
``tile`` pixels plus a ``halo``) goes through the family's own ``predict_maps`` and ``postprocess``, and the
objects are stitched across tile borders by :mod:`.stitch` into a uint32 label array (zarr on disk, or
NumPy). Only one window's maps exist at a time; they are dropped once the window is post-processed.

Normalisation uses statistics of the *whole* image (the same percentile sample a whole-image run takes), so
every tile sees the same intensity mapping. On CUDA out-of-memory the network tile is halved and the tile
retried, with a progress message saying so.

Example
-------
>>> from napari_instance_tuner.core.progress import run
>>> result = run(stream_segment(loaded, "slide.ome.tif", params, out="slide_labels.zarr"))  # doctest: +SKIP
>>> result.labels.shape, result.count  # doctest: +SKIP
((40000, 52000), 18234)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InstanceTunerError
from .family import Family, Instances
from .image import to_channels_last
from .progress import CancelToken, Progress
from .stitch import Stitcher, TileGrid, TileResult, classify

#: Samples taken for the normalisation percentiles (as :func:`.image.normalise` takes).
_PERCENTILE_SAMPLES = 4_000_000


@dataclass(frozen=True)
class StreamSettings:
    """How a large image is cut and run.

    Attributes
    ----------
    tile : int
        Core edge in image pixels; images no larger than this (both sides) run in one piece. Rounded to 32.
    halo : int
        Context read around every core, image pixels; objects smaller than the halo are stitched exactly.
    network_tile : int or None
        Tile edge given to ``predict_maps`` (network pixels); None = the checkpoint's. Halved on CUDA OOM.
    min_network_tile : int
        Smallest network tile tried after out-of-memory errors before giving up.
    amp : bool
        Run the network under ``torch.autocast``: float16 on CUDA, bfloat16 on a CPU with native bfloat16
        (AVX512-BF16 or AMX); float32 elsewhere.
    threads : int
        CPU threads reading ahead and post-processing while the network runs (:mod:`.stream_pipeline`);
        0 = the cores this process may use (at most 8), 1 = the plain serial loop. The labels do not depend
        on it.
    """

    tile: int = 2048
    halo: int = 256
    network_tile: int | None = None
    min_network_tile: int = 64
    amp: bool = False
    threads: int = 0

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile grid of an (H, W) image."""
        tile = max(32, -(-int(self.tile) // 32) * 32)
        halo = max(0, -(-int(self.halo) // 16) * 16)
        if shape[0] <= tile and shape[1] <= tile:
            tile = max(shape)
        return TileGrid((int(shape[0]), int(shape[1])), tile, halo)

    def to_dict(self) -> dict:
        """What changes the result (for recipes)."""
        return {"tile": int(self.tile), "halo": int(self.halo), "amp": bool(self.amp)}


# -- lazy input --------------------------------------------------------------------------------------------


class TiffImage:
    """A TIFF / OME-TIFF / pyramidal slide read lazily through ``tifffile``'s zarr store (full resolution).

    Slicing decodes only the TIFF tiles or strips it touches. Close it (or use ``with``) to release the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import tifffile
        import zarr

        self.path = Path(path)
        self._store = tifffile.imread(self.path, aszarr=True)
        node = zarr.open(self._store, mode="r")
        if not hasattr(node, "shape"):  # a pyramid: a group of levels "0", "1", ...
            node = node[min(node.array_keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)]
        self._array = node

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def __getitem__(self, key):
        return self._array[key]

    def close(self) -> None:
        """Release the file."""
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf")


def open_image(source: Any) -> Any:
    """A lazily sliceable (H, W[, C]) array for ``source``.

    Parameters
    ----------
    source : path, array, dask array, zarr array or list
        A TIFF path (a :class:`TiffImage`: tiles are decoded only when sliced; pyramidal files give their
        full-resolution level; close it when done), a ``.zarr`` path, another image path (read into memory),
        a list of arrays (a napari multiscale layer's ``data``: the first, largest level), or anything with
        ``shape`` and NumPy slicing (NumPy, dask, zarr).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in _TIFF_SUFFIXES:
            return TiffImage(path)
        if path.suffix.lower() == ".zarr":
            import zarr

            return zarr.open_array(str(path), mode="r")
        from .data import read_image

        return read_image(path, streamed=True)
    if isinstance(source, (list, tuple)):
        return open_image(source[0])
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        return source
    return np.asarray(source)


def image_shape(image: Any) -> tuple[int, int]:
    """(H, W) of a lazy image, channel-first (C, H, W) with C <= 4 included."""
    shape = tuple(image.shape)
    if len(shape) == 3 and shape[-1] > 4 and shape[0] <= 4:
        return shape[1], shape[2]
    return shape[0], shape[1]


def read_window(image: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """NumPy copy of rows y0:y1, columns x0:x1 of a lazy image (channels kept; channel-first handled)."""
    y0, x0, y1, x1 = box
    shape = tuple(image.shape)
    if len(shape) == 3 and shape[-1] > 4 and shape[0] <= 4:
        return np.asarray(image[:, y0:y1, x0:x1])
    block = image[y0:y1, x0:x1]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


# -- normalisation from whole-image statistics ---------------------------------------------------------------


@dataclass(frozen=True)
class Normaliser:
    """Per-channel affine normalisation fixed for the whole image: ``(x - low) / scale``."""

    in_channels: int
    low: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """float32 (h, w, in_channels) normalised window."""
        arr = to_channels_last(raw, self.in_channels)
        if self.low is None:
            return arr
        return ((arr - self.low) / self.scale).astype(np.float32)


def fit_normaliser(image: Any, meta: dict, band: int = 512) -> Normaliser:
    """Whole-image percentile statistics, reading ``band`` rows at a time.

    Takes the same samples as :func:`.image.normalise` on the whole image (every ``step``-th pixel in raster
    order), so a tiled run normalises exactly as a whole-image run.
    """
    in_channels = int(meta.get("in_channels", 3))
    spec = meta.get("normalisation") or {"kind": "percentile", "low": 1.0, "high": 99.8}
    if spec["kind"] == "none":
        return Normaliser(in_channels)
    if spec["kind"] != "percentile":
        raise InstanceTunerError(f"unknown normalisation {spec['kind']!r}")
    height, width = image_shape(image)
    step = max(1, height * width // _PERCENTILE_SAMPLES)
    samples = []
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        flat = to_channels_last(read_window(image, (y0, 0, y1, width)), in_channels).reshape(-1, in_channels)
        samples.append(flat[(-y0 * width) % step :: step])
    lo, hi = np.percentile(np.concatenate(samples), [spec["low"], spec["high"]], axis=0)
    scale = np.where(hi - lo > 1e-6 * np.maximum(1.0, np.abs(hi)), hi - lo, np.inf)
    return Normaliser(in_channels, lo, scale)  # dtypes as in normalise(), so the arithmetic is identical


# -- one window: network (with OOM retry) and post-processing --------------------------------------------------


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


def inference_autocast(device: str | None, amp: bool):
    """The autocast context of inference with ``amp``: float16 on CUDA, bfloat16 on a CPU with native bfloat16.

    Parameters
    ----------
    device : str or None
        The torch device the network runs on (None: the CPU).
    amp : bool
        Whether mixed precision was asked for.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast`` as above, or a null context (float32) without ``amp`` or where it would be slow.
        Unlike :func:`~.training.training_autocast`, it never refuses: inference falls back to float32.
    """
    if not amp:
        return contextlib.nullcontext()
    import torch

    from .training import bfloat16_supported

    if device and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    if str(device or "cpu") == "cpu" and bfloat16_supported("cpu"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict_window(
    family: Family,
    model: Any,
    window: np.ndarray,
    meta: dict,
    settings: StreamSettings,
    state: dict,
    *,
    device: str | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Any]:
    """``family.predict_maps`` on one normalised window; on CUDA out-of-memory halve the network tile, retry.

    ``state["network_tile"]`` holds the current network tile (starts at the settings' or the checkpoint's)
    and keeps a reduced value for the following windows. Autocast (``settings.amp``) is entered only while
    the network runs, not across the generator's yields.
    """
    state.setdefault("network_tile", settings.network_tile or int(meta.get("tile_size", 512)))
    while True:
        gen = family.predict_maps(model, window, meta, device=device, tile_size=state["network_tile"],
                                  cancel=cancel)
        try:
            while True:
                with inference_autocast(device, settings.amp):
                    item = next(gen)
                yield item
        except StopIteration as stop:
            return stop.value
        except Exception as exc:  # only CUDA OOM is handled, the rest re-raised
            if not _is_cuda_oom(exc):
                raise
            gen.close()
            _free_cuda()
            old = state["network_tile"]
            if old // 2 < settings.min_network_tile:
                raise InstanceTunerError(f"CUDA out of memory even with network tiles of {old} px; "
                                         "use --device cpu or a smaller model") from exc
            state["network_tile"] = old // 2
            yield Progress(0, 0, f"CUDA out of memory with network tiles of {old} px; "
                                 f"retrying with {old // 2} px", {"oom": True, "network_tile": old // 2})


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def segment_tile(
    family: Family,
    model: Any,
    meta: dict,
    params: Any,
    image: Any,
    grid: TileGrid,
    index: int,
    normaliser: Normaliser,
    settings: StreamSettings,
    state: dict | None = None,
    *,
    device: str | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, TileResult]:
    """Read, predict, post-process and classify tile ``index`` of ``grid``; returns its :class:`TileResult`."""
    window = normaliser(read_window(image, grid.window(index)))
    tile_meta = {**meta, "normalisation": {"kind": "none"}}
    maps = yield from predict_window(family, model, window, tile_meta, settings, {} if state is None else state,
                                     device=device, cancel=cancel)
    del window
    instances = family.postprocess(maps, params)
    del maps
    return classify(instances, grid, index)


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
    from .inference import choose_device

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
    from .stream_pipeline import auto_threads, pipelined_tiles

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
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    stitcher.add(stop.value)
                    break
                if p.info.get("oom"):
                    yield Progress(index, total, p.message, p.info)
            yield Progress(index + 1, total, f"tile {index + 1}/{total}")
    count = stitcher.finish()
    return StreamResult(labels, count, stitcher.objects if keep_objects else None, len(run))


def stitched_instances(result: StreamResult) -> Instances:
    """A small stitched result as :class:`~.family.Instances` (dense masks: only for images that fit)."""
    labels = np.asarray(result.labels[:]) if not isinstance(result.labels, np.ndarray) else result.labels
    if result.objects is None:
        return Instances(labels=labels)
    masks = np.zeros((len(result.objects),) + labels.shape, bool)
    for k, obj in enumerate(result.objects):
        y0, x0, y1, x1 = obj.box
        masks[k, y0:y1, x0:x1] = obj.mask
    scores = [o.score for o in result.objects]
    return Instances(labels=labels, masks=masks,
                     scores=None if any(s is None for s in scores) else np.asarray(scores, np.float32))

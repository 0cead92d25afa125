"""Tissue detection on a low-resolution level, so that a whole slide's background tiles never reach the network.

A brightfield slide is mostly glass: white (or light grey), unsaturated. As QuPath's and HistoQC's simple
tissue detectors do, :func:`tissue_mask` thresholds a thumbnail (a coarse pyramid level, or level 0 read
with a stride) with Otsu's method on the saturation and on the grey level, each threshold kept within a
range that a slide of tissue only or glass only cannot push to nonsense; small specks are removed and the
mask is dilated a little. :func:`tissue_filter` turns the mask into the ``tile_filter`` of
:func:`.streaming.stream_segment`: a tile runs when its core (plus a margin) touches tissue.

Only RGB(A) images are filtered; grey or fluorescence images (no glass to find) keep every tile.

Example
-------
>>> thumb, down = thumbnail(source)  # doctest: +SKIP
>>> keep = tissue_filter(tissue_mask(thumb), down)  # doctest: +SKIP
>>> run(stream_segment(loaded, source.levels[0], params, tile_filter=keep))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: Otsu thresholds are kept within these ranges (saturation and grey, both in [0, 1]).
SATURATION_RANGE = (0.04, 0.15)
GREY_RANGE = (0.6, 0.9)


def is_rgb(array: Any) -> bool:
    """Whether a (H, W, C) image has 3 or 4 channels (brightfield RGB / RGBA)."""
    shape = tuple(array.shape)
    return len(shape) == 3 and shape[-1] in (3, 4)


def _otsu(values: np.ndarray, low: float, high: float) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or values.min() == values.max():
        return high
    return float(np.clip(threshold_otsu(values), low, high))


def tissue_mask(thumb: np.ndarray, *, min_size: int = 16, dilate: int = 2) -> np.ndarray:
    """bool (h, w) tissue mask of an RGB(A) thumbnail; all True for grey images.

    Parameters
    ----------
    thumb : np.ndarray
        (h, w, 3 or 4) thumbnail, uint8 (0-255) or float (0-1); (h, w) grey gives an all-True mask.
    min_size : int
        Tissue components smaller than this many thumbnail pixels are dropped (dust, pen specks).
    dilate : int
        Thumbnail pixels the mask is grown by (tissue edges that the coarse level blurs).

    Returns
    -------
    np.ndarray
        bool (h, w): True where there is tissue.
    """
    if not is_rgb(thumb):
        return np.ones(thumb.shape[:2], bool)
    rgb = np.asarray(thumb[..., :3], np.float32)
    if np.issubdtype(np.asarray(thumb).dtype, np.integer):
        rgb = rgb / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    grey = rgb.mean(axis=-1)
    mask = (saturation > _otsu(saturation, *SATURATION_RANGE)) | (grey < _otsu(grey, *GREY_RANGE))
    labels, n = ndi.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        mask = (sizes >= min_size)[labels] & mask
    if dilate > 0:
        mask = ndi.binary_dilation(mask, iterations=dilate)
    return mask


def thumbnail(levels: list[Any], downsamples: list[float], max_side: int = 2048) -> tuple[np.ndarray, float]:
    """A low-resolution copy of a slide: its coarsest level, or a strided read when that level is large.

    Parameters
    ----------
    levels : list of array-like
        Pyramid levels, level 0 first ((H, W[, C]) channels last, lazily sliceable with a stride).
    downsamples : list of float
        Level-0 pixels per pixel of each level.
    max_side : int
        Largest thumbnail side; a larger coarsest level is read in bands of rows, every ``step``-th pixel.

    Returns
    -------
    thumb : np.ndarray
        (h, w[, C]) of the level's dtype.
    downsample : float
        Level-0 pixels per thumbnail pixel.
    """
    k = int(np.argmax(downsamples))
    level = levels[k]
    height, width = int(level.shape[0]), int(level.shape[1])
    step = max(1, -(-max(height, width) // max_side))
    band = step * max(1, 1024 // step)
    rows = []
    for y in range(0, height, band):
        block = level[y : min(height, y + band) : step, ::step]  # zarr, dask and NumPy slice with a stride
        rows.append(np.asarray(block.compute() if hasattr(block, "compute") else block))
    return np.concatenate(rows, axis=0), float(downsamples[k]) * step


def tissue_filter(mask: np.ndarray, scale: float, offset: tuple[float, float] = (0.0, 0.0),
                  margin: float = 0.0) -> Callable[[tuple[int, int, int, int]], bool]:
    """A ``tile_filter`` for :func:`.streaming.stream_segment`: True where a tile's core touches tissue.

    Parameters
    ----------
    mask : np.ndarray
        bool (h, w) tissue mask of a thumbnail.
    scale : float
        Mask pixels per streamed-image pixel (e.g. 1 / the thumbnail's downsample when the level-0 image is
        streamed; ``model-scale factor / thumbnail downsample`` for a resampled view).
    offset : (float, float)
        Mask coordinates (y, x) of the streamed image's pixel (0, 0) (a region's origin).
    margin : float
        Streamed-image pixels added around every core before the test.

    Returns
    -------
    callable
        ``keep((y0, x0, y1, x1)) -> bool`` on a core box in streamed-image pixels.
    """
    h, w = mask.shape
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def keep(box: tuple[int, int, int, int]) -> bool:
        y0, x0, y1, x1 = box
        my0 = int(np.clip(np.floor(offset[0] + (y0 - margin) * scale), 0, h))
        mx0 = int(np.clip(np.floor(offset[1] + (x0 - margin) * scale), 0, w))
        my1 = int(np.clip(np.ceil(offset[0] + (y1 + margin) * scale), 0, h))
        mx1 = int(np.clip(np.ceil(offset[1] + (x1 + margin) * scale), 0, w))
        if my1 <= my0 or mx1 <= mx0:
            return False
        return bool(integral[my1, mx1] - integral[my0, mx1] - integral[my1, mx0] + integral[my0, mx0] > 0)

    return keep

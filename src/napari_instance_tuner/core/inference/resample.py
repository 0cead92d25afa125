"""Pixel size: images and slides resampled lazily to a model's scale, labels mapped back to level 0.

Every model records the pixel size of its training data (``pixel_size_um`` in its metadata or model card,
µm per pixel before the model's own ``pixel_scale`` resize). An image of another pixel size is shown to the
model through :class:`ResampledImage`, a lazy view read window by window from the pyramid level nearest the
model's scale (never a coarser one); the labels that come back at the model's scale are seen in the image's
own level-0 pixels through :class:`UpscaledLabels`.

Coordinates: output pixel ``i`` of a view with ``factor`` f (source pixels per output pixel) samples the
source at ``(i + 0.5) * f - 0.5``, the same for every window, so tiles agree at their seams.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ResampledImage", "UpscaledLabels", "model_pixel_size", "scale_factor"]

#: Relative pixel-size difference below which an image is used as it is.
TOLERANCE = 0.02


def model_pixel_size(meta: dict) -> float | None:
    """µm per pixel of a model's training data (``meta["pixel_size_um"]``), None when not recorded."""
    value = meta.get("pixel_size_um")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def scale_factor(image_um: float | None, model_um: float | None) -> float:
    """Image pixels per model pixel (``model_um / image_um``); 1.0 when either is unknown or they agree."""
    if image_um is None or model_um is None:
        return 1.0
    factor = model_um / image_um
    return 1.0 if abs(factor - 1.0) <= TOLERANCE else factor


class ResampledImage:
    """A lazy (H', W'[, C]) view of a region of ``source`` resampled by ``factor`` source pixels per pixel.

    Parameters
    ----------
    source : array-like
        (H, W) or (H, W, C) image (NumPy, dask, zarr): read one window per slice.
    factor : float
        Source pixels per output pixel (> 1 shrinks: a Gaussian of sigma ``(factor - 1) / 2`` is applied
        first against aliasing, as :func:`skimage.transform.rescale` does).
    region : (int, int, int, int), optional
        (y, x, h, w) of the region in ``source`` pixels (default: all of it).
    """

    def __init__(self, source: Any, factor: float, region: tuple[int, int, int, int] | None = None) -> None:
        self.source, self.factor = source, float(factor)
        full = (0, 0, int(source.shape[0]), int(source.shape[1]))
        self.region = tuple(int(v) for v in (region or full))
        h, w = self.region[2:]
        self.shape = (max(1, round(h / self.factor)), max(1, round(w / self.factor)), *tuple(source.shape[2:]))
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def _span(self, start: int, stop: int, origin: int, limit: int, margin: int) -> tuple[np.ndarray, int, int]:
        """Source coordinates of output pixels start..stop-1, and the source rows/cols [a, b) to read."""
        coords = (np.arange(start, stop) + 0.5) * self.factor - 0.5 + origin
        a = max(0, int(np.floor(coords[0])) - margin) if coords.size else 0
        b = min(limit, int(np.ceil(coords[-1])) + 2 + margin) if coords.size else 0
        return coords, a, max(b, a + 1)

    def __getitem__(self, key: Any) -> np.ndarray:
        import cv2

        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (key + (slice(None), slice(None)))[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        sigma = max(0.0, (self.factor - 1.0) / 2.0)
        margin = int(np.ceil(3 * sigma)) + 1
        cy, ay, by = self._span(y0, max(y1, y0), self.region[0], int(self.source.shape[0]), margin)
        cx, ax, bx = self._span(x0, max(x1, x0), self.region[1], int(self.source.shape[1]), margin)
        if cy.size == 0 or cx.size == 0:
            return np.zeros((cy.size, cx.size, *self.shape[2:]), self.dtype)[(slice(None),) * 2 + key[2:]]
        block = self.source[ay:by, ax:bx]
        window = np.asarray(block.compute() if hasattr(block, "compute") else block, np.float32)
        if sigma > 0:
            window = cv2.GaussianBlur(window, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        map_x = np.broadcast_to((cx - ax).astype(np.float32)[None, :], (cy.size, cx.size))
        map_y = np.broadcast_to((cy - ay).astype(np.float32)[:, None], (cy.size, cx.size))
        out = cv2.remap(window, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        if out.ndim < window.ndim:
            out = out[..., None]
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(self.dtype)[(slice(None),) * 2 + key[2:]]


class UpscaledLabels:
    """A lazy (H, W) uint32 view of ``labels`` (at a model's scale) in the image's level-0 pixels (nearest).

    Level-0 pixel ``i`` shows label pixel ``floor((i + 0.5) / factor)``: with ``factor`` level-0 pixels per
    label pixel, label pixel ``j`` covers level-0 ``[j * factor, (j + 1) * factor)``, as its GeoJSON outline.

    Parameters
    ----------
    labels : array-like
        Integer (h, w) labels (NumPy or zarr).
    factor : float
        Level-0 pixels per label pixel.
    shape : (int, int)
        (H, W) of the view (the region's size in level-0 pixels).
    """

    def __init__(self, labels: Any, factor: float, shape: tuple[int, int]) -> None:
        self.labels, self.factor = labels, float(factor)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(labels.dtype)
        self.ndim = 2

    def _index(self, start: int, stop: int, limit: int) -> np.ndarray:
        return np.minimum(((np.arange(start, stop) + 0.5) / self.factor).astype(np.int64), limit - 1)

    def __getitem__(self, key: tuple) -> np.ndarray:
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0)), self.dtype)
        iy = self._index(y0, y1, int(self.labels.shape[0]))
        ix = self._index(x0, x1, int(self.labels.shape[1]))
        block = np.asarray(self.labels[int(iy[0]) : int(iy[-1]) + 1, int(ix[0]) : int(ix[-1]) + 1])
        return block[np.ix_(iy - iy[0], ix - ix[0])]

"""A large image read window by window, and normalised with statistics of the whole image.

:func:`open_image` turns a path (tiled TIFF / OME-TIFF / pyramidal slide through ``tifffile``'s zarr store, a
``.zarr`` folder, any other image), a napari multiscale list or an array into something sliceable without
reading it whole; :func:`read_window` reads one window of it as NumPy; :func:`fit_normaliser` computes the
percentile normalisation of the whole image band by band, so that every tile of a streamed run
(:mod:`.streaming`) sees the same intensity mapping as a whole-image run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstanceTunerError
from ..training.data import read_image
from .image import to_channels_last

#: Samples taken for the normalisation percentiles (as :func:`.image.normalise` takes).
_PERCENTILE_SAMPLES = 4_000_000


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

"""Label images as TIFF: whole in memory (:func:`write_label_tiff`) or tile by tile (:func:`write_label_tiff_tiles`).

Labels are uint16 when the largest label fits, else uint32 (:func:`label_dtype`). A lazy label array (zarr or
dask, e.g. level 0 of a streamed segmentation) is read one block at a time and never whole. Every file is
written to a temporary file beside its target and renamed into place (:func:`.safe_write.write_atomic`).
Re-exported by :mod:`.export`. Every label TIFF names its writer in the TIFF ``Software`` tag
(:data:`LABELS_SOFTWARE`), which is how :mod:`.label_tiff` tells the plugin's label files from images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from .safe_write import ExportError, check_target, write_atomic

#: The TIFF ``Software`` tag of every label image written here (read back by :func:`.label_tiff.is_label_tiff`).
LABELS_SOFTWARE = "napari-instance-tuner labels"

# -- label images ----------------------------------------------------------------------------------------


def label_dtype(labels: np.ndarray) -> type:
    """``np.uint16`` when the largest label fits, else ``np.uint32``.

    Raises
    ------
    ExportError
        For negative, non-integer or larger-than-uint32 labels.
    """
    arr = np.asarray(labels)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ExportError(f"labels must be integers; got dtype {arr.dtype}")
    low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if low < 0:
        raise ExportError("labels must not be negative")
    if high > np.iinfo(np.uint32).max:
        raise ExportError(f"label {high} does not fit a 32-bit label image")
    return np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32


def write_label_tiff(
    path: str | os.PathLike,
    labels: np.ndarray,
    pixel_size: tuple[float, float] | None = None,
    unit: str = "µm",
    overwrite: bool = False,
) -> Path:
    """Write a label image (H, W) or stack (Z, H, W) as a zlib-compressed TIFF, uint16 or uint32.

    With ``pixel_size`` = (y, x) size of a pixel in ``unit``, uint16 files are ImageJ hyperstacks (Fiji reads
    the calibration) and uint32 files, which ImageJ's format cannot hold, are OME-TIFF with
    ``PhysicalSizeX/Y``; both also carry the standard resolution tags.
    """
    data = np.ascontiguousarray(labels, dtype=label_dtype(labels))
    axes = "YX" if data.ndim == 2 else "ZYX"
    if data.ndim not in (2, 3):
        raise ExportError(f"labels of shape {data.shape} cannot be written; expected (H, W) or (Z, H, W)")
    if data.size == 0:
        raise ExportError(f"the labels are empty (shape {data.shape}); nothing to write")
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack", "software": LABELS_SOFTWARE}
    if pixel_size is not None:
        sy, sx = (float(v) for v in pixel_size)
        kwargs["resolution"] = (1.0 / sx, 1.0 / sy)
        if data.dtype == np.uint16:
            kwargs.update(imagej=True, metadata={"axes": axes, "unit": "um" if unit in ("µm", "um") else unit})
        else:
            kwargs.update(ome=True, metadata={"axes": axes, "PhysicalSizeX": sx, "PhysicalSizeY": sy,
                                              "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
    else:
        kwargs["metadata"] = {"axes": axes}

    def write(fh: IO[bytes]) -> None:
        import tifffile

        tifffile.imwrite(fh, data, **kwargs)

    return write_atomic(path, write, overwrite)


def is_lazy(array: Any) -> bool:
    """Whether ``array`` is array-like but not NumPy (zarr, dask, ...): read block by block, not whole."""
    return not isinstance(array, np.ndarray) and hasattr(array, "shape") and hasattr(array, "dtype")


def _blocks(shape: tuple[int, int], tile: tuple[int, int]):
    """(y0, y1, x0, x1) of the ``tile`` blocks of an (H, W) array in row-major order (edge blocks smaller)."""
    for y0 in range(0, shape[0], tile[0]):
        for x0 in range(0, shape[1], tile[1]):
            yield y0, min(shape[0], y0 + tile[0]), x0, min(shape[1], x0 + tile[1])


def _read(array: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """NumPy copy of rows y0:y1, columns x0:x1 of a NumPy, zarr or dask (H, W) array."""
    block = array[y0:y1, x0:x1]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def _tile_shape(shape: tuple[int, int], tile: int) -> tuple[int, int]:
    """TIFF tile (th, tw): ``tile`` rounded up to a multiple of 16, no larger than needed for ``shape``."""
    tile = max(16, -(-int(tile) // 16) * 16)
    return min(tile, max(16, -(-shape[0] // 16) * 16)), min(tile, max(16, -(-shape[1] // 16) * 16))


def lazy_label_dtype(labels: Any, tile: int = 1024) -> type:
    """:func:`label_dtype` of an (H, W) array that may not fit in memory, reading ``tile`` x ``tile`` blocks.

    Parameters
    ----------
    labels : zarr.Array, dask.array.Array or np.ndarray
        Integer (or bool) labels of shape (H, W).
    tile : int
        Edge of the blocks read, one at a time, for the smallest and largest label (unsigned dtypes of at
        most 16 bits need no reading).

    Returns
    -------
    type
        ``np.uint16`` when the largest label fits, else ``np.uint32``.

    Raises
    ------
    ExportError
        For non-integer, negative or larger-than-uint32 labels.
    """
    dtype = np.dtype(labels.dtype)
    if dtype != bool and not np.issubdtype(dtype, np.integer):
        raise ExportError(f"labels must be integers; got dtype {dtype}")
    if dtype == bool or (dtype.kind == "u" and dtype.itemsize <= 2):
        return np.uint16
    low = high = 0
    for y0, y1, x0, x1 in _blocks(tuple(labels.shape), (tile, tile)):
        block = _read(labels, y0, y1, x0, x1)
        if block.size:
            low, high = min(low, int(block.min())), max(high, int(block.max()))
    return label_dtype(np.array([low, high], np.int64))


def write_label_tiff_tiles(
    path: str | os.PathLike,
    labels: Any,
    pixel_size: tuple[float, float] | None = None,
    unit: str = "µm",
    overwrite: bool = False,
    tile: int = 1024,
) -> Path:
    """Write a 2D label image of any size as a tiled, zlib-compressed TIFF, one tile in memory at a time.

    Parameters
    ----------
    path : path-like
        The ``.tif`` file (written to a temporary file beside it, then renamed into place).
    labels : zarr.Array, dask.array.Array or np.ndarray
        Integer (H, W) labels; read ``tile`` x ``tile`` pixels at a time (twice: once for the dtype, see
        :func:`lazy_label_dtype`, once to write). Best aligned with the array's chunks.
    pixel_size : (float, float), optional
        (y, x) size of a pixel in ``unit``: the file is then an OME-TIFF with ``PhysicalSizeX/Y`` (ImageJ
        hyperstacks cannot be tiled), with the standard resolution tags too.
    unit : str
        Unit of ``pixel_size``.
    overwrite : bool
        Replace an existing file.
    tile : int
        TIFF tile edge (pixels; rounded up to a multiple of 16, smaller for small images).

    Returns
    -------
    Path
        The file written: uint16 pixels when the largest label fits, else uint32, equal to ``labels``;
        BigTIFF when the pixels take more than about 4 GB.

    Raises
    ------
    ExportError
        For labels that are not 2D, empty, negative, non-integer or above uint32; for unwritable targets.
    OverwriteError
        If the file exists and ``overwrite`` is False.
    """
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) != 2:
        raise ExportError(f"labels of shape {shape} cannot be written tile by tile; expected (H, W)")
    if 0 in shape:
        raise ExportError(f"the labels are empty (shape {shape}); nothing to write")
    check_target(path, overwrite)
    tiles = _tile_shape(shape, tile)
    dtype = np.dtype(lazy_label_dtype(labels, max(tiles)))
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack", "software": LABELS_SOFTWARE,
                              "tile": tiles, "shape": shape,
                              "dtype": dtype, "bigtiff": shape[0] * shape[1] * dtype.itemsize > 2**32 - 2**25}
    if pixel_size is not None:
        sy, sx = (float(v) for v in pixel_size)
        kwargs.update(resolution=(1.0 / sx, 1.0 / sy), ome=True,
                      metadata={"axes": "YX", "PhysicalSizeX": sx, "PhysicalSizeY": sy,
                                "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
    else:
        kwargs["metadata"] = {"axes": "YX"}

    def blocks():
        for y0, y1, x0, x1 in _blocks(shape, tiles):  # tifffile pads the edge tiles
            yield np.ascontiguousarray(_read(labels, y0, y1, x0, x1), dtype=dtype)

    def write(fh: IO[bytes]) -> None:
        import tifffile

        tifffile.imwrite(fh, blocks(), **kwargs)

    return write_atomic(path, write, overwrite)

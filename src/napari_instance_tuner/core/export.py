"""Export instances to the files other tools open: label TIFF/PNG, measurement CSV, QuPath GeoJSON, mask stacks.

Every file is written to a temporary file beside its target and renamed into place, so a failure never
leaves a partial file, and an existing file is replaced only with ``overwrite=True``. Headless: numpy,
scikit-image, tifffile and imageio only.

Labels larger than memory (a zarr or dask array, e.g. level 0 of a streamed segmentation) are written as a
tiled TIFF one tile at a time (:func:`write_label_tiff_tiles`); the other formats need the whole label image
in memory and take such labels only up to :data:`MAX_IN_MEMORY_PIXELS`.

Examples
--------
>>> import tempfile
>>> labels = np.zeros((8, 24), np.uint32); labels[2:6, 10:20] = 1
>>> folder = tempfile.mkdtemp()
>>> sorted(p.name for p in export_instances(labels, ExportOptions(folder, "cells", ("tiff", "csv"))))
['cells.csv', 'cells.tif']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .io.geojson import OBJECT_TYPES, geojson_features, write_geojson
from .measure import add_scores, measure_masks, measure_stack, to_csv
from .safe_write import ExportError, OverwriteError, check_target, write_atomic, write_text

__all__ = [
    "ExportError", "OverwriteError", "ExportOptions", "SUFFIXES", "OBJECT_TYPES", "check_target", "write_atomic",
    "write_text", "label_dtype", "write_label_tiff", "write_label_png", "labels_to_masks", "write_mask_stack",
    "measurements", "write_measurements_csv", "geojson_features", "write_geojson", "export_targets",
    "export_instances", "MAX_IN_MEMORY_PIXELS", "is_lazy", "lazy_label_dtype", "write_label_tiff_tiles",
]

#: Export formats and the file name each gets from a base name.
SUFFIXES = {"tiff": ".tif", "png": ".png", "csv": ".csv", "geojson": ".geojson", "masks": "_masks.npz",
            "recipe": ".recipe.json"}
_MAX_MASK_BYTES = 2 << 30
#: Largest lazy (zarr / dask) label image, in pixels (H * W, or Z * H * W), that formats other than a 2D TIFF
#: read whole into memory.
MAX_IN_MEMORY_PIXELS = 8192 * 8192
#: What each format is called in messages.
_FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "csv": "measurements (CSV)", "geojson": "GeoJSON",
                 "masks": "mask stack"}


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
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
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
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack", "tile": tiles, "shape": shape,
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


def _whole(labels: Any, formats: list[str]) -> np.ndarray:
    """Lazy ``labels`` read into memory for ``formats``, which need them whole; refused when too large."""
    pixels = int(np.prod(labels.shape))
    if pixels > MAX_IN_MEMORY_PIXELS:
        names = " and ".join(_FORMAT_NAMES[f] for f in formats)
        size = " x ".join(str(int(n)) for n in labels.shape)
        raise ExportError(
            f"{names} need{'s' if len(formats) == 1 else ''} the whole label image in memory, and these labels "
            f"are {size} ({pixels / 1e6:.0f} megapixels, more than {MAX_IN_MEMORY_PIXELS / 1e6:.0f}): "
            "export the label image (TIFF), which is written tile by tile"
        )
    return _read(labels, 0, labels.shape[0], 0, labels.shape[1]) if len(labels.shape) == 2 else np.asarray(labels)


def write_label_png(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a 2D label image as a 16-bit greyscale PNG.

    Raises
    ------
    ExportError
        For stacks and labels above 65535 (use TIFF).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ExportError(f"PNG holds one 2D label image; got shape {arr.shape} (use TIFF for stacks)")
    if label_dtype(arr) != np.uint16:
        raise ExportError(f"PNG holds labels up to 65535; the largest here is {int(arr.max())} (use TIFF)")

    def write(fh: IO[bytes]) -> None:
        import imageio.v3 as iio

        fh.write(iio.imwrite("<bytes>", arr.astype(np.uint16), extension=".png"))

    return write_atomic(path, write, overwrite)


def labels_to_masks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masks bool (N, H, W), label ids (N,)) of a 2D label image, one mask per label present."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ExportError(f"a mask stack is made from one 2D label image; got shape {arr.shape}")
    ids = np.unique(arr[arr > 0])
    if ids.size * arr.size > _MAX_MASK_BYTES:
        raise ExportError(f"{ids.size} masks of {arr.shape} would take {ids.size * arr.size / 2**30:.1f} GiB; "
                          "export the label image instead")
    return arr[None] == ids[:, None, None], ids


def write_mask_stack(
    path: str | os.PathLike,
    masks: np.ndarray,
    scores: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write per-object masks that may overlap, which one label image cannot hold.

    A ``.npz`` path gets ``masks`` bool (N, H, W), ``labels`` (N,) uint32 (``ids``, default 1..N) and, when
    given, ``scores`` (N,) float32; a ``.tif`` path a zlib-compressed uint8 stack (0/255, one page per object).
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ExportError(f"a mask stack must be (N, H, W); got shape {masks.shape}")
    if str(path).lower().endswith((".tif", ".tiff")):
        def write(fh: IO[bytes]) -> None:
            import tifffile

            tifffile.imwrite(fh, masks.astype(np.uint8) * 255, compression="zlib", metadata={"axes": "QYX"})
    else:
        ids = np.arange(1, masks.shape[0] + 1) if ids is None else np.asarray(ids)
        arrays = {"masks": masks, "labels": ids.astype(np.uint32)}
        if scores is not None:
            arrays["scores"] = np.asarray(scores, np.float32)

        def write(fh: IO[bytes]) -> None:
            np.savez_compressed(fh, **arrays)

    return write_atomic(path, write, overwrite)


# -- measurements and GeoJSON ------------------------------------------------------------------------------


def measurements(
    labels: np.ndarray, image: np.ndarray | None = None, masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Measurement table of ``masks`` (N, H, W) when given, else of ``labels``; with ``score`` if scores given."""
    table = measure_masks(masks, image) if masks is not None else measure_stack(labels, image)
    return add_scores(table, scores)


def write_measurements_csv(path: str | os.PathLike, table: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write a table from :func:`measurements` as CSV (one row per object)."""
    return write_text(path, to_csv(table), overwrite)


# -- everything at once --------------------------------------------------------------------------------


@dataclass
class ExportOptions:
    """What :func:`export_instances` writes, and where.

    Attributes
    ----------
    folder : path-like
        Existing folder to write into.
    base_name : str
        File names are ``base_name`` + the suffix of each format (see :data:`SUFFIXES`).
    formats : tuple of str
        Any of ``"tiff", "png", "csv", "geojson", "masks"``.
    object_type : str
        QuPath object type of the GeoJSON features: ``"detection"`` or ``"annotation"``.
    classification : str or None
        QuPath class name of the GeoJSON features.
    pixel_size : (float, float) or None
        (y, x) pixel size in ``unit`` for the TIFF metadata.
    overwrite : bool
        Replace existing files.
    """

    folder: str | os.PathLike
    base_name: str
    formats: tuple[str, ...] = ("tiff", "csv")
    object_type: str = "detection"
    classification: str | None = None
    pixel_size: tuple[float, float] | None = None
    unit: str = "µm"
    overwrite: bool = False


def export_targets(options: ExportOptions, recipe: bool = False) -> dict[str, Path]:
    """Format -> the path :func:`export_instances` would write (``"recipe"`` included when asked)."""
    unknown = [f for f in options.formats if f not in SUFFIXES or f == "recipe"]
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r}; valid: {', '.join(list(SUFFIXES)[:-1])}")
    name = options.base_name.strip()
    if not name or any(sep in name for sep in ("/", "\\", os.sep)) or name in (".", ".."):
        raise ExportError(f"{options.base_name!r} is not a valid file name")
    formats = list(options.formats) + (["recipe"] if recipe else [])
    return {f: Path(options.folder) / f"{name}{SUFFIXES[f]}" for f in formats}


def export_instances(
    labels: np.ndarray,
    options: ExportOptions,
    *,
    image: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    recipe: dict | None = None,
) -> list[Path]:
    """Write the formats in ``options`` (and ``recipe`` as JSON when given); returns the paths written.

    Parameters
    ----------
    labels : np.ndarray, zarr.Array or dask.array.Array
        Integer (H, W) label image, or (Z, H, W) for TIFF and CSV. A lazy (zarr / dask) (H, W) array is never
        read whole for TIFF: it is written by :func:`write_label_tiff_tiles`, tile by tile. Other formats
        read it into memory, up to :data:`MAX_IN_MEMORY_PIXELS` pixels.
    image : np.ndarray, zarr.Array or dask.array.Array, optional
        Source image for intensity columns (read only when CSV or GeoJSON is written).
    masks : np.ndarray, optional
        bool (N, H, W) possibly overlapping objects; measurements, GeoJSON and the mask stack then use
        them, one object each.
    scores : np.ndarray, optional
        float (N,) per-object score: a ``score`` column / measurement.
    recipe : dict, optional
        A recipe (see :mod:`.recipe`) written beside the export.

    Raises
    ------
    OverwriteError
        Before anything is written, if any target exists and ``options.overwrite`` is False.
    ExportError
        For unwritable targets and data a format cannot hold; before anything is written, for lazy labels
        larger than :data:`MAX_IN_MEMORY_PIXELS` with a format other than TIFF.
    """
    targets = export_targets(options, recipe is not None)
    for path in targets.values():
        check_target(path, options.overwrite)
    tiled = labels if is_lazy(labels) and len(labels.shape) == 2 else None
    if is_lazy(labels):
        whole = [fmt for fmt in targets if fmt not in (("tiff", "recipe") if tiled is not None else ("recipe",))]
        labels = _whole(labels, whole) if whole else None
    written = []
    table = None
    if {"csv", "geojson"} & set(targets):
        table = measurements(labels, None if image is None else np.asarray(image), masks, scores)
    for fmt, path in targets.items():
        if fmt == "tiff" and tiled is not None:
            write_label_tiff_tiles(path, tiled, options.pixel_size, options.unit, options.overwrite)
        elif fmt == "tiff":
            write_label_tiff(path, labels, options.pixel_size, options.unit, options.overwrite)
        elif fmt == "png":
            write_label_png(path, labels, options.overwrite)
        elif fmt == "csv":
            write_measurements_csv(path, table, options.overwrite)
        elif fmt == "geojson":
            um = options.pixel_size if options.unit in ("µm", "um") else None
            collection = geojson_features(labels, table, masks, options.object_type, options.classification,
                                          pixel_size=um)
            write_geojson(path, collection, options.overwrite)
        elif fmt == "masks":
            if masks is not None:
                write_mask_stack(path, masks, scores, None, options.overwrite)
            else:
                stack, ids = labels_to_masks(labels)
                picked = None if scores is None else add_scores({"label": ids}, scores)["score"]
                write_mask_stack(path, stack, picked, ids, options.overwrite)
        elif fmt == "recipe":
            from .recipe import recipe_text

            write_text(path, recipe_text(recipe), options.overwrite)
        written.append(path)
    return written

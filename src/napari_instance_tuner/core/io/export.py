"""Export instances to the files other tools open: label TIFF/PNG, measurement CSV, QuPath GeoJSON, mask stacks.

Every file is written to a temporary file beside its target and renamed into place, so a failure never
leaves a partial file, and an existing file is replaced only with ``overwrite=True``. Headless: numpy,
scikit-image, tifffile and imageio only.

Labels larger than memory (a zarr or dask array, e.g. level 0 of a streamed segmentation) are written as a
tiled TIFF one tile at a time (:func:`~.export_tiff.write_label_tiff_tiles`); the other formats need the whole
label image in memory and take such labels only up to :data:`MAX_IN_MEMORY_PIXELS`.

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

from ..evaluation.measure import add_scores, measure_masks, measure_stack, to_csv
from ..sparse_masks import SparseMasks
from .export_tiff import _read, is_lazy, label_dtype, lazy_label_dtype, write_label_tiff, write_label_tiff_tiles
from .geojson import OBJECT_TYPES, geojson_features, write_geojson
from .mask_stack import read_mask_stack, write_mask_stack
from .recipe import recipe_text
from .safe_write import ExportError, OverwriteError, check_target, write_atomic, write_text

__all__ = [
    "MAX_IN_MEMORY_PIXELS",
    "OBJECT_TYPES",
    "SUFFIXES",
    "ExportError",
    "ExportOptions",
    "OverwriteError",
    "check_target",
    "export_instances",
    "export_targets",
    "geojson_features",
    "is_lazy",
    "label_dtype",
    "labels_to_masks",
    "lazy_label_dtype",
    "measurements",
    "read_mask_stack",
    "write_atomic",
    "write_geojson",
    "write_label_png",
    "write_label_tiff",
    "write_label_tiff_tiles",
    "write_mask_stack",
    "write_measurements_csv",
    "write_text",
]

#: Export formats and the file name each gets from a base name.
SUFFIXES = {"tiff": ".tif", "png": ".png", "csv": ".csv", "geojson": ".geojson", "masks": "_masks.npz",
            "recipe": ".recipe.json"}
#: Largest lazy (zarr / dask) label image, in pixels (H * W, or Z * H * W), that formats other than a 2D TIFF
#: read whole into memory.
MAX_IN_MEMORY_PIXELS = 8192 * 8192
#: What each format is called in messages.
_FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "csv": "measurements (CSV)", "geojson": "GeoJSON",
                 "masks": "mask stack"}


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


def labels_to_masks(labels: np.ndarray) -> tuple[SparseMasks, np.ndarray]:
    """(objects, label ids (N,)) of a 2D label image, one object (box and crop) per label present."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ExportError(f"a mask stack is made from one 2D label image; got shape {arr.shape}")
    ids = np.unique(arr[arr > 0])
    return SparseMasks.from_labels(arr), ids


# -- measurements and GeoJSON ------------------------------------------------------------------------------


def measurements(
    labels: np.ndarray, image: np.ndarray | None = None, masks: SparseMasks | np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Measurement table of the objects ``masks`` (boxes and crops, or bool (N, H, W)) when given, else of
    ``labels``; with ``score`` if scores given."""
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
    masks : SparseMasks or np.ndarray, optional
        Possibly overlapping objects (boxes and crops, e.g. ``Instances.objects``; a bool (N, H, W) stack is
        accepted too); measurements, GeoJSON and the mask stack (packed planes, :mod:`.mask_stack`) then use
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
    if masks is not None and not isinstance(masks, SparseMasks):
        masks = SparseMasks.from_dense(masks)
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
                objects, ids = labels_to_masks(labels)
                picked = None if scores is None else add_scores({"label": ids}, scores)["score"]
                write_mask_stack(path, objects, picked, ids, options.overwrite)
        elif fmt == "recipe":
            write_text(path, recipe_text(recipe), options.overwrite)
        written.append(path)
    return written

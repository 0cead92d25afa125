"""Per-object outputs (QuPath GeoJSON, measurement CSV) of label images of any size, in level-0 pixels.

Labels of a slide are read block by block for each object's bounding box, then each object's crop alone:
the whole label image is never in memory. Labels made at another resolution than the image's level 0 (a
model's scale) or in a region of it are mapped back with ``factor`` (level-0 pixels per label pixel) and
``offset`` (the region's level-0 origin); areas and lengths are then in level-0 pixels, and in µm / µm² when
the pixel size is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation.measure import measure_labels
from .geojson import feature, scale_polygons
from .polygons import mask_polygons

__all__ = ["LabelFrame", "iter_objects", "object_boxes", "object_features", "object_table"]

_LENGTHS = ("perimeter", "major_axis_length", "minor_axis_length")


@dataclass(frozen=True)
class LabelFrame:
    """Where labels sit in the image: ``factor`` level-0 pixels per label pixel, ``offset`` (y, x) in level 0.

    ``pixel_size_um`` is µm per level-0 pixel (None when unknown); ``extent`` (h, w) the region's size in
    level-0 pixels, to which outlines are clipped (labels at a model's scale may reach a fraction of a pixel
    beyond it).
    """

    factor: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    pixel_size_um: float | None = None
    extent: tuple[float, float] | None = None


def _read(array: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    block = array[y0:y1, x0:x1]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def object_boxes(labels: Any, block: int = 2048) -> dict[int, tuple[int, int, int, int]]:
    """Label id -> bounding box (y0, x0, y1, x1), half-open, of an (H, W) label array read block by block."""
    from scipy import ndimage

    boxes: dict[int, list[int]] = {}
    h, w = int(labels.shape[0]), int(labels.shape[1])
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            tile = _read(labels, y0, min(h, y0 + block), x0, min(w, x0 + block))
            ids = np.unique(tile[tile > 0])
            if ids.size == 0:
                continue
            compact = np.searchsorted(ids, tile) + 1
            compact[tile == 0] = 0
            for k, sl in enumerate(ndimage.find_objects(compact)):
                if sl is None:
                    continue
                box = [sl[0].start + y0, sl[1].start + x0, sl[0].stop + y0, sl[1].stop + x0]
                old = boxes.get(int(ids[k]))
                boxes[int(ids[k])] = box if old is None else [min(old[0], box[0]), min(old[1], box[1]),
                                                              max(old[2], box[2]), max(old[3], box[3])]
    return {k: tuple(v) for k, v in sorted(boxes.items())}


def iter_objects(labels: Any, boxes: dict[int, tuple[int, int, int, int]]) -> Iterator[tuple[int, np.ndarray, tuple]]:
    """(id, bool mask crop, box) of every object, reading only its box."""
    for label, box in boxes.items():
        y0, x0, y1, x1 = box
        yield label, _read(labels, y0, y1, x0, x1) == label, box


def _row(label: int, mask: np.ndarray, box: tuple, image: Any | None, frame: LabelFrame) -> dict[str, float]:
    """Measurements of one object (see :func:`..evaluation.measure.measure_labels`) in level-0 pixels / µm."""
    y0, x0, y1, x1 = box
    crop = None if image is None else np.asarray(image[y0:y1, x0:x1])
    table = measure_labels(np.pad(mask, 1).astype(np.uint8), None if crop is None else np.pad(
        crop, ((1, 1), (1, 1)) + ((0, 0),) * (crop.ndim - 2), mode="edge"))
    row = {k: float(v[0]) for k, v in table.items()}
    g, (oy, ox) = frame.factor, frame.offset
    row["label"] = label
    row["area"] *= g * g
    for key in _LENGTHS:
        row[key] *= g
    row["centroid_y"] = (row["centroid_y"] - 1 + y0 + 0.5) * g - 0.5 + oy
    row["centroid_x"] = (row["centroid_x"] - 1 + x0 + 0.5) * g - 0.5 + ox
    row["bbox_y0"], row["bbox_y1"] = y0 * g + oy, y1 * g + oy
    row["bbox_x0"], row["bbox_x1"] = x0 * g + ox, x1 * g + ox
    if frame.pixel_size_um is not None:
        row["area_um2"] = row["area"] * frame.pixel_size_um**2
        row["perimeter_um"] = row["perimeter"] * frame.pixel_size_um
    return row


def object_table(labels: Any, frame: LabelFrame, image: Any | None = None, boxes: dict | None = None) -> dict[str, np.ndarray]:
    """Measurement table (one row per object, level-0 pixels; ``area_um2``, ``perimeter_um`` when calibrated).

    Parameters
    ----------
    labels : array-like
        Integer (h, w) labels (NumPy, zarr, dask), in the frame described by ``frame``.
    frame : LabelFrame
    image : array-like, optional
        The image the labels were made from, in the labels' pixels (h, w[, C]): mean/min/max intensities.
    boxes : dict, optional
        From :func:`object_boxes` (computed when not given).
    """
    boxes = object_boxes(labels) if boxes is None else boxes
    rows = [_row(label, mask, box, image, frame) for label, mask, box in iter_objects(labels, boxes)]
    if not rows:
        return {"label": np.zeros(0, np.int64)}
    return {key: np.asarray([r[key] for r in rows]) for key in rows[0]}


def object_features(
    labels: Any,
    frame: LabelFrame,
    *,
    image: Any | None = None,
    object_type: str = "detection",
    classification: str | None = None,
    model: str | None = None,
    boxes: dict | None = None,
) -> dict:
    """A QuPath GeoJSON FeatureCollection of the objects of ``labels``, in level-0 pixel coordinates.

    Each feature: UUID ``id``, valid Polygon/MultiPolygon (holes kept), ``objectType``, optional
    ``classification`` with colour, ``measurements`` (area and perimeter in level-0 pixels, ``Area µm^2`` and
    ``Perimeter µm`` when calibrated, shape descriptors, mean intensities) and ``metadata.model``.
    """
    boxes = object_boxes(labels) if boxes is None else boxes
    clip = None
    if frame.extent is not None:
        (oy, ox), (h, w) = frame.offset, frame.extent
        clip = (ox, oy, ox + w, oy + h)
    skip = {"centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area_um2", "perimeter_um",
            "min_intensity", "max_intensity"}
    features = []
    for label, mask, box in iter_objects(labels, boxes):
        row = _row(label, mask, box, image, frame)
        values = {k: v for k, v in row.items() if k not in skip and not k.startswith(("min_int", "max_int"))}
        if "area_um2" in row:
            values["Area µm^2"], values["Perimeter µm"] = row["area_um2"], row["perimeter_um"]
        polygons = scale_polygons(mask_polygons(mask, box[:2]), (frame.factor, frame.factor), frame.offset)
        made = feature(polygons, object_type=object_type, classification=classification, measurements=values,
                       metadata={"model": model} if model else None, clip=clip)
        if made is not None:
            features.append(made)
    return {"type": "FeatureCollection", "features": features}

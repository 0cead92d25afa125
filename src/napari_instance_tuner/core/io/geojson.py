"""QuPath GeoJSON: instances written to QuPath's conventions, and QuPath's objects read back as labels.

The conventions (from QuPath's own source, 0.4 to 0.7; ``../shared/docs/qupath-geojson.md``) this writer keeps:

* a ``FeatureCollection``; every ``Feature`` has a UUID ``id`` and a ``Polygon`` or ``MultiPolygon`` geometry
  (holes kept) in level-0 pixel coordinates, origin at the image's top-left corner, y down;
* geometry that is valid to JTS: QuPath 0.6+ aborts the whole import on an invalid ring, so every geometry
  goes through ``shapely.make_valid`` and only its polygonal part is kept;
* ``properties.objectType`` ``detection`` (or ``annotation``); ``properties.classification`` always carries a
  ``color`` (QuPath aborts on a classification without one); ``properties.measurements`` a name -> number map
  (``NaN`` and infinities left out); text such as the model name goes to ``properties.metadata``.

The reader takes what QuPath exports (a FeatureCollection, a bare Feature, an array of Features or a bare
geometry; ``Polygon`` and ``MultiPolygon`` with holes; classifications as objects or strings) and rasterises
it with the pixel-centre rule of :func:`.polygons.rasterise`, so writing labels and reading them back gives
the same objects.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstanceTunerError
from ..sparse_masks import SparseMasks
from .polygons import Polygon, mask_polygons, rasterise
from .safe_write import ExportError, write_text

__all__ = ["OBJECT_TYPES", "QUPATH_COLORS", "GeoObject", "class_color", "feature", "geojson_features", "labels_extent",
           "objects_to_labels", "objects_to_shapes", "read_geojson", "scale_polygons", "valid_geometry", "write_geojson"]

#: Colours of QuPath's built-in classes ([r, g, b]); other class names get a colour from their name.
QUPATH_COLORS = {"Tumor": [200, 0, 0], "Stroma": [150, 200, 150], "Immune cells": [160, 90, 160],
                 "Necrosis": [50, 50, 50], "Other": [255, 200, 0], "Region*": [0, 0, 180], "Ignore*": [180, 180, 180],
                 "Positive": [200, 50, 50], "Negative": [112, 112, 225]}
_GEOMETRIES = ("Polygon", "MultiPolygon")
#: QuPath object types the writers produce.
OBJECT_TYPES = ("detection", "annotation")


def class_color(name: str) -> list[int]:
    """[r, g, b] of a class: QuPath's colour for its built-in classes, else a stable colour from the name."""
    if name in QUPATH_COLORS:
        return list(QUPATH_COLORS[name])
    digest = zlib.crc32(name.encode("utf-8"))
    return [64 + (digest >> shift & 0xFF) * 3 // 4 for shift in (0, 8, 16)]


def _round(value: float) -> int | float:
    """A coordinate as QuPath writes it: at most 2 decimals (its 0.01 px grid), integers without a point."""
    value = round(float(value), 2)
    return int(value) if value.is_integer() else value


def valid_geometry(polygons: list[Polygon], clip: tuple[float, float, float, float] | None = None) -> dict | None:
    """A JTS-valid GeoJSON ``Polygon``/``MultiPolygon`` covering ``polygons``, or None if nothing is left.

    Parameters
    ----------
    polygons : list of polygons
        Each ``[exterior, hole, ...]``, rings closed lists of ``[x, y]`` (e.g. from :func:`.mask_polygons`).
    clip : (float, float, float, float), optional
        (x0, y0, x1, y1): the geometry is cut to this box (the image or region it belongs to).

    Returns
    -------
    dict or None
        The geometry after ``shapely.make_valid`` (self-touching or crossing rings repaired; lines and
        points it may produce dropped), coordinates rounded to QuPath's 0.01 px grid; None when empty.
    """
    import shapely
    from shapely.geometry import MultiPolygon as ShMulti
    from shapely.geometry import Polygon as ShPolygon
    from shapely.geometry import mapping

    parts = [ShPolygon(p[0], p[1:]) for p in polygons if len(p[0]) >= 4]
    geom = ShMulti(parts) if len(parts) > 1 else (parts[0] if parts else ShPolygon())
    if clip is not None:
        geom = shapely.make_valid(geom).intersection(shapely.box(*clip))
    for step in range(2):  # valid, then on QuPath's 0.01 px grid (snap rounding keeps polygons valid)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        if geom.geom_type == "GeometryCollection":
            polys = [g for g in geom.geoms if g.geom_type in _GEOMETRIES and not g.is_empty]
            geom = shapely.union_all(polys) if polys else ShPolygon()
        if step == 0:
            geom = shapely.set_precision(geom, 0.01)
    if geom.is_empty or geom.geom_type not in _GEOMETRIES:
        return None
    geom = shapely.geometry.polygon.orient(geom, 1.0) if geom.geom_type == "Polygon" else ShMulti(
        [shapely.geometry.polygon.orient(g, 1.0) for g in geom.geoms])
    out = mapping(geom)

    def rings(poly):
        return [[[_round(x), _round(y)] for x, y in ring] for ring in poly]

    coords = rings(out["coordinates"]) if out["type"] == "Polygon" else [rings(p) for p in out["coordinates"]]
    return {"type": out["type"], "coordinates": coords}


def scale_polygons(polygons: list[Polygon], scale: tuple[float, float], offset: tuple[float, float]) -> list[Polygon]:
    """Polygons mapped to another pixel frame: ``x' = x * scale[1] + offset[1]``, ``y' = y * scale[0] + offset[0]``.

    Parameters
    ----------
    scale : (float, float)
        (y, x) size of one pixel of the polygons' frame in pixels of the target frame (e.g. level 0).
    offset : (float, float)
        (y, x) of the polygons' origin in the target frame.
    """
    sy, sx = scale
    oy, ox = offset
    return [[[[x * sx + ox, y * sy + oy] for x, y in ring] for ring in poly] for poly in polygons]


def feature(
    polygons: list[Polygon],
    *,
    object_type: str = "detection",
    classification: str | None = None,
    measurements: dict[str, float] | None = None,
    metadata: dict[str, str] | None = None,
    clip: tuple[float, float, float, float] | None = None,
) -> dict | None:
    """One QuPath feature (UUID ``id``, valid geometry, properties), or None if the geometry is empty.

    Parameters
    ----------
    polygons : list of polygons
        The object's outline in level-0 pixel-edge coordinates (see :mod:`.polygons`).
    object_type : str
        ``"detection"`` or ``"annotation"``.
    classification : str, optional
        QuPath class name; written as ``{"name": ..., "color": [r, g, b]}``.
    measurements : dict, optional
        Name -> number; values that are not finite are left out (QuPath 0.4 cannot read them).
    metadata : dict, optional
        Name -> text (e.g. the model's name).
    clip : (float, float, float, float), optional
        (x0, y0, x1, y1) box the geometry is cut to.
    """
    geom = valid_geometry(polygons, clip)
    if geom is None:
        return None
    props: dict[str, Any] = {"objectType": object_type}
    if classification:
        props["classification"] = {"name": classification, "color": class_color(classification)}
    props["measurements"] = {str(k): (int(v) if isinstance(v, (int, np.integer)) else float(v))
                             for k, v in (measurements or {}).items() if np.isfinite(v)}
    if metadata:
        props["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geom, "properties": props}


def geojson_features(
    labels: np.ndarray,
    table: dict[str, np.ndarray],
    masks: SparseMasks | np.ndarray | None = None,
    object_type: str = "detection",
    classification: str | None = None,
    *,
    pixel_size: tuple[float, float] | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[float, float] = (0.0, 0.0),
    model: str | None = None,
) -> dict:
    """A GeoJSON ``FeatureCollection`` to QuPath's conventions , one feature per object.

    Geometries are exact pixel outlines (see :mod:`.polygons`) made JTS-valid: holes are interior rings, a
    label in several pieces a ``MultiPolygon``. Overlapping ``masks`` give separate features. Each feature
    has a UUID ``id``; ``properties`` hold ``objectType``, ``classification`` ``{"name", "color"}`` when
    given, ``measurements`` (the table's finite values except coordinates, which the geometry carries) and,
    with ``model``, ``metadata.model``.

    Parameters
    ----------
    labels : np.ndarray
        Integer (H, W) labels (ignored when ``masks`` is given).
    table : dict
        Measurements from :func:`.export.measurements` (pixel units of ``labels``).
    masks : SparseMasks or np.ndarray, optional
        Possibly overlapping objects: boxes and crops (a bool (N, H, W) stack is converted); polygons are
        traced from each object's crop.
    object_type, classification : str
        QuPath object type (``detection`` or ``annotation``) and class name.
    pixel_size : (float, float), optional
        (y, x) µm per level-0 pixel: adds ``Area µm^2`` and ``Perimeter µm``.
    scale, offset : (float, float)
        (y, x) level-0 pixels per label pixel, and the labels' origin in level 0: the geometry and the pixel
        measurements are written in level-0 pixels (labels segmented at another resolution or in an ROI).
    model : str, optional
        Name of the model that made the objects.
    """
    if object_type not in OBJECT_TYPES:
        raise ExportError(f"objectType must be one of {', '.join(OBJECT_TYPES)}; got {object_type!r}")
    if masks is not None and not isinstance(masks, SparseMasks):
        masks = SparseMasks.from_dense(masks)
    if masks is None and np.ndim(labels) != 2:
        raise ExportError(f"GeoJSON holds one 2D image; got labels of shape {np.shape(labels)}")
    skip = {"centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "slice"}
    linear = float(np.sqrt(scale[0] * scale[1]))
    features = []
    for i, label in enumerate(table["label"].tolist()):
        y0, x0, y1, x1 = (int(table[k][i]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))
        if masks is not None:  # the object's crop, cut to the table's (tight) box
            by, bx = (int(v) for v in masks.boxes[label - 1, :2])
            mask = masks.crop(label - 1)[y0 - by : y1 - by, x0 - bx : x1 - bx]
        else:
            mask = np.asarray(labels[y0:y1, x0:x1]) == label
        values = {k: _number(v[i]) for k, v in table.items() if k not in skip and np.isfinite(v[i])}
        for key, power in (("area", 2), ("perimeter", 1), ("major_axis_length", 1), ("minor_axis_length", 1)):
            if key in values and linear != 1.0:
                values[key] = float(values[key]) * linear**power
        if pixel_size is not None:
            um = float(np.sqrt(pixel_size[0] * pixel_size[1]))
            values["Area µm^2"] = float(values.get("area", 0.0)) * um * um
            values["Perimeter µm"] = float(values.get("perimeter", 0.0)) * um
        polygons = scale_polygons(mask_polygons(mask, (y0, x0)), scale, offset)
        made = feature(polygons, object_type=object_type, classification=classification, measurements=values,
                       metadata={"model": model} if model else None)
        if made is not None:
            features.append(made)
    return {"type": "FeatureCollection", "features": features}


def _number(value: Any) -> int | float:
    return int(value) if isinstance(value, (np.integer, int)) else float(value)


def write_geojson(path: str | os.PathLike, collection: dict, overwrite: bool = False) -> Path:
    """Write a FeatureCollection from :func:`geojson_features` (or :func:`.objects.object_features`) as compact
    JSON, atomically (see :mod:`.safe_write`)."""
    return write_text(path, json.dumps(collection, separators=(",", ":"), allow_nan=False), overwrite)


# -- reading -------------------------------------------------------------------------------------------------


@dataclass
class GeoObject:
    """One polygonal object read from a GeoJSON file.

    Attributes
    ----------
    polygons : list of polygons
        ``[exterior, hole, ...]`` per part, rings of ``[x, y]`` floats in the file's (level-0 pixel) frame.
    object_type : str
        QuPath's ``objectType`` (``annotation`` when the file has none, as QuPath does).
    classification : str or None
        The class name (derived classes joined with ``": "``).
    id : str or None
    measurements : dict
        Name -> number (non-numeric values skipped).
    """

    polygons: list[Polygon]
    object_type: str = "annotation"
    classification: str | None = None
    id: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)


def _load(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InstanceTunerError(f"{path.name!r} is not a JSON file: {exc}") from None


def _features(node: Any) -> list[dict]:
    """The features of QuPath's accepted top levels (collection, feature, array, bare geometry)."""
    if isinstance(node, list):
        return [f for item in node for f in _features(item)]
    if not isinstance(node, dict):
        return []
    kind = node.get("type")
    if kind == "FeatureCollection":
        return [f for f in node.get("features") or [] if isinstance(f, dict)]
    if kind == "Feature":
        return [node]
    if "coordinates" in node:
        return [{"geometry": node, "properties": {}}]
    return []


def _class_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        names = value.get("names") or ([value["name"]] if value.get("name") else [])
        return ": ".join(str(n) for n in names) or None
    return None


def read_geojson(path: str | os.PathLike) -> list[GeoObject]:
    """The polygonal objects of a GeoJSON file (QuPath export or this plugin's), in file order.

    Points and lines are skipped (they have no pixels); objects whose geometry is missing too.

    Raises
    ------
    InstanceTunerError
        For a missing or non-JSON file, or one with no polygonal object.
    """
    path = Path(path)
    if not path.is_file():
        raise InstanceTunerError(f"GeoJSON file {str(path)!r} does not exist")
    objects = []
    for feat in _features(_load(path)):
        geom = feat.get("geometry") or {}
        if geom.get("type") not in _GEOMETRIES:
            continue
        coords = geom.get("coordinates") or []
        polys = [coords] if geom["type"] == "Polygon" else coords
        polys = [[[[float(x), float(y)] for x, y, *_ in ring] for ring in poly] for poly in polys if poly]
        if not polys:
            continue
        props = feat.get("properties") or {}
        raw = props.get("measurements") or {}
        if isinstance(raw, list):  # QuPath 0.3's [{name, value}]
            raw = {m.get("name"): m.get("value") for m in raw if isinstance(m, dict)}
        numbers = {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        kind = props.get("objectType") or props.get("object_type") or "annotation"
        objects.append(GeoObject(polys, str(kind), _class_name(props.get("classification")),
                                 None if feat.get("id") is None else str(feat["id"]), numbers))
    if not objects:
        raise InstanceTunerError(f"{path.name!r} holds no Polygon or MultiPolygon objects")
    return objects


def labels_extent(objects: list[GeoObject]) -> tuple[int, int]:
    """(H, W) that holds every object: the largest y and x of their vertices, rounded up."""
    xs = [x for o in objects for poly in o.polygons for ring in poly for x, _ in ring]
    ys = [y for o in objects for poly in o.polygons for ring in poly for _, y in ring]
    return int(np.ceil(max(ys))), int(np.ceil(max(xs)))


def objects_to_labels(objects: list[GeoObject], shape: tuple[int, int] | None = None, downsample: float = 1.0) -> np.ndarray:
    """Rasterise objects into a label image: object k (file order) gets label k + 1.

    Parameters
    ----------
    objects : list of GeoObject
    shape : (int, int), optional
        (H, W) of the label image in level-0 pixels (default: :func:`labels_extent`).
    downsample : float
        Level-0 pixels per label pixel (>= 1 for slides too large to rasterise at full resolution).

    Returns
    -------
    np.ndarray
        uint32 (ceil(H / downsample), ceil(W / downsample)). Where objects overlap, the later one wins (a
        Labels layer holds one id per pixel; read them as Shapes to keep overlaps).
    """
    shape = shape or labels_extent(objects)
    out_shape = (int(np.ceil(shape[0] / downsample)), int(np.ceil(shape[1] / downsample)))
    labels = np.zeros(out_shape, np.uint32)
    for k, obj in enumerate(objects, start=1):
        polys = scale_polygons(obj.polygons, (1 / downsample, 1 / downsample), (0.0, 0.0))
        xs = [x for poly in polys for x, _ in poly[0]]
        ys = [y for poly in polys for _, y in poly[0]]
        y0, x0 = max(int(np.floor(min(ys))), 0), max(int(np.floor(min(xs))), 0)
        y1, x1 = min(int(np.ceil(max(ys))), out_shape[0]), min(int(np.ceil(max(xs))), out_shape[1])
        if y1 <= y0 or x1 <= x0:
            continue
        local = scale_polygons(polys, (1.0, 1.0), (-y0, -x0))
        geom = {"type": "MultiPolygon", "coordinates": local}
        labels[y0:y1, x0:x1][rasterise(geom, (y1 - y0, x1 - x0))] = k
    return labels


def objects_to_shapes(objects: list[GeoObject]) -> tuple[list[np.ndarray], list[str]]:
    """Exterior rings as napari Shapes polygons: float (N, 2) arrays of (y, x) vertices, and class names.

    Holes cannot be drawn by a Shapes polygon and are left out; each part of a MultiPolygon is one shape.
    """
    data, classes = [], []
    for obj in objects:
        for poly in obj.polygons:
            ring = np.asarray(poly[0], float)[:-1, ::-1]
            data.append(ring)
            classes.append(obj.classification or "")
    return data, classes


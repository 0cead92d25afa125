"""npe2 readers: whole slides as lazy multiscale RGB layers, QuPath GeoJSON as Labels or Shapes, the plugin's own
label TIFFs as Labels.

Each ``get_*_reader(path)`` returns a function that reads the path into napari layer data tuples, or None
when the path is not for it (napari then asks its other readers). Problems are raised as
:class:`~.core.errors.InstanceTunerError` with a one-line message.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .core.io.geojson import labels_extent, objects_to_labels, objects_to_shapes, read_geojson
from .core.io.label_tiff import is_label_tiff, read_label_tiff
from .core.io.slides import is_slide, open_slide

#: GeoJSON larger than this many level-0 pixels (H * W) is rasterised on a coarser grid (layer scale > 1).
MAX_LABEL_PIXELS = 16384 * 16384
_GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz")

LayerData = list[tuple[Any, dict, str]]


def _one_path(path: str | list[str]) -> str | None:
    if isinstance(path, list):
        return path[0] if len(path) == 1 else None
    return path


def get_slide_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """The slide reader for SVS/NDPI/SCN/MRXS/BIF files and tiled pyramidal TIFFs; None for other paths."""
    one = _one_path(path)
    return read_slide if one is not None and is_slide(one) else None


def read_slide(path: str | list[str]) -> LayerData:
    """One multiscale RGB image layer: a dask array per pyramid level, scale = the pixel size in µm."""
    slide = open_slide(_one_path(path))
    size = slide.pixel_size_um
    meta = {"slide": slide.metadata(), "pixel_size_um": size}
    if size is None:
        meta["note"] = "the file records no pixel size: shown in pixels"
    kwargs = {"name": slide.path.stem, "rgb": True, "metadata": meta, "contrast_limits": (0, 255),
              "multiscale": len(slide.levels) > 1}
    if size is not None:
        kwargs.update(scale=(size, size), units=("micrometer", "micrometer"))
    data = slide.levels if len(slide.levels) > 1 else slide.levels[0]
    if slide.closer is not None:
        # The levels read the open file lazily for as long as the layer lives: close it with them (the
        # callback holds the reader's close method only, not the arrays, so it does not keep them alive).
        weakref.finalize(slide.levels[0], slide.closer)
    return [(data, kwargs, "image")]


def _geojson_path(path: str | list[str]) -> str | None:
    one = _one_path(path)
    return one if one is not None and str(one).lower().endswith(_GEOJSON_SUFFIXES) else None


def get_geojson_labels_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """GeoJSON (QuPath objects) as a Labels layer; None for other paths."""
    return read_geojson_labels if _geojson_path(path) else None


def get_geojson_shapes_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """GeoJSON (QuPath objects) as a Shapes layer of polygons; None for other paths."""
    return read_geojson_shapes if _geojson_path(path) else None


def read_geojson_labels(path: str | list[str]) -> LayerData:
    """A Labels layer: object k of the file is label k; the layer's scale is level-0 pixels per label pixel.

    Files whose objects span more than :data:`MAX_LABEL_PIXELS` level-0 pixels are rasterised on a grid
    coarsened by a power of two, so a slide's objects open without a slide-sized array. Give the layer the
    image's pixel size (``scale``) to lay it over a calibrated image.
    """
    import numpy as np

    one = Path(_geojson_path(path) or _one_path(path))
    objects = read_geojson(one)
    shape = labels_extent(objects)
    down = 1
    while shape[0] * shape[1] / down**2 > MAX_LABEL_PIXELS:
        down *= 2
    labels = objects_to_labels(objects, shape, down)
    classes = [o.classification or "" for o in objects]
    meta = {"source": str(one), "classes": classes, "object_types": [o.object_type for o in objects],
            "ids": [o.id for o in objects], "downsample": down}
    kwargs = {"name": one.name.split(".")[0], "metadata": meta, "scale": (float(down), float(down)),
              "features": {"class": ["", *classes]}}
    return [(labels.astype(np.uint32, copy=False), kwargs, "labels")]


def read_geojson_shapes(path: str | list[str]) -> LayerData:
    """A Shapes layer of polygons (exterior rings; holes cannot be drawn), with the class of each."""
    one = Path(_geojson_path(path) or _one_path(path))
    data, classes = objects_to_shapes(read_geojson(one))
    kwargs = {"name": one.name.split(".")[0], "shape_type": "polygon", "features": {"class": classes},
              "edge_width": 1.0, "face_color": "transparent", "edge_color": "yellow"}
    return [(data, kwargs, "shapes")]


def get_label_tiff_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """The plugin's own label TIFFs (marked by the writer, :mod:`.core.io.label_tiff`) as Labels; None otherwise,
    so ordinary TIFF images still open as images."""
    one = _one_path(path)
    return read_label_tiff_layer if one is not None and is_label_tiff(one) else None


def read_label_tiff_layer(path: str | list[str]) -> LayerData:
    """One Labels layer named after the file; scale = the pixel size the file records (µm), if any."""
    one = Path(_one_path(path))
    labels, size = read_label_tiff(one)
    kwargs: dict[str, Any] = {"name": one.stem, "metadata": {"source": str(one), "pixel_size_um": size}}
    if size is not None:
        kwargs["scale"] = (1.0,) * (labels.ndim - 2) + size
    return [(labels, kwargs, "labels")]

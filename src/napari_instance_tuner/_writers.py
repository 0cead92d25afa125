"""npe2 writers for a Labels layer: label TIFF, 16-bit PNG, measurement CSV and QuPath GeoJSON.

napari calls each with ``(path, data, attributes)`` (the single-layer writer API) after its save dialog has
asked before replacing a file, so these write with ``overwrite=True``, still atomically. They return the
paths written; problems are raised as :class:`~.core.errors.InstanceTunerError` with a one-line message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .core.io.export import (
    geojson_features,
    measurements,
    write_geojson,
    write_label_png,
    write_label_tiff,
    write_measurements_csv,
)


def pixel_size(attributes: dict) -> tuple[tuple[float, float] | None, str]:
    """((y, x) pixel size, unit) from a layer's ``scale`` and ``units``; None for an uncalibrated layer.

    A layer scaled in plain "pixel" units (napari's default unit) is taken to be in micrometres, the
    convention of microscopy readers that set only the scale.
    """
    scale = attributes.get("scale")
    if scale is None or len(scale) < 2:
        return None, "µm"
    sy, sx = (float(v) for v in scale[-2:])
    units = attributes.get("units") or ()
    unit = str(units[-1]) if len(units) else "pixel"
    if unit in ("pixel", "px", "dimensionless", ""):
        if sy == 1.0 and sx == 1.0:
            return None, "µm"
        unit = "µm"
    return (sy, sx), {"micrometer": "µm", "micron": "µm", "um": "µm", "nanometer": "nm", "millimeter": "mm"}.get(
        unit, unit
    )


def _labels(data: Any) -> np.ndarray:
    return np.asarray(data[0] if isinstance(data, list) else data)  # multiscale: the full resolution


def write_labels_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as a compressed uint16/uint32 TIFF with its pixel size."""
    size, unit = pixel_size(attributes)
    return [str(write_label_tiff(path, _labels(data), size, unit, overwrite=True))]


def write_labels_png(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a 2D Labels layer with at most 65535 labels as a 16-bit PNG."""
    return [str(write_label_png(path, _labels(data), overwrite=True))]


def write_labels_csv(path: str, data: Any, attributes: dict) -> list[str]:
    """Write the per-object measurements (shape only: a writer sees no image) of a Labels layer as CSV."""
    return [str(write_measurements_csv(path, measurements(_labels(data)), overwrite=True))]


def write_labels_geojson(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a 2D Labels layer as a QuPath GeoJSON FeatureCollection of detections."""
    labels = _labels(data)
    size, unit = pixel_size(attributes)
    collection = geojson_features(labels, measurements(labels), object_type="detection",
                                  pixel_size=size if unit == "µm" else None)
    return [str(write_geojson(path, collection, overwrite=True))]

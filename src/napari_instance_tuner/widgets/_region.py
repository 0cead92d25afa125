"""The region the Segment widget runs on: the whole image, or the box around a Shapes layer's shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The region choice meaning "all of the image".
WHOLE = "whole image"


def shapes_layers(viewer: Any) -> list:
    """The viewer's Shapes layers (each may hold a drawn rectangle or polygon: the region)."""
    from napari.layers import Shapes

    return [layer for layer in viewer.layers if isinstance(layer, Shapes)]


def region_choices(viewer: Any) -> list[tuple[str, Any]]:
    """(label, value) choices: the whole image, then one per Shapes layer."""
    return [(WHOLE, None)] + [(f"shapes: {layer.name}", layer) for layer in shapes_layers(viewer)]


def shapes_roi(shapes: Any, image: Any) -> tuple[int, int, int, int] | None:
    """(y, x, h, w) in the image's level-0 pixels of the box around the selected shapes (all when none is).

    Vertices are mapped world -> data through the image layer, so scaled and translated layers agree.
    Polygons give their bounding box. None when the layer holds no shape or the box misses the image.
    """
    if shapes is None or len(shapes.data) == 0:
        return None
    chosen = sorted(shapes.selected_data) or range(len(shapes.data))
    points = np.concatenate([np.asarray(shapes.data[i], float)[:, -2:] for i in chosen])
    world = [shapes.data_to_world(p) for p in np.concatenate([np.zeros((len(points), shapes.ndim - 2)), points],
                                                           axis=1)]
    pixels = np.array([np.asarray(image.world_to_data(w), float)[:2] for w in world])
    shape = (image.data[0] if image.multiscale else image.data).shape[:2]
    y0, x0 = np.maximum(np.floor(pixels.min(axis=0) + 0.5), 0).astype(int)
    y1, x1 = np.minimum(np.ceil(pixels.max(axis=0) + 0.5), shape).astype(int)
    if y1 <= y0 or x1 <= x0:
        return None
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)

"""The region the Segment widget runs on: the whole image, the visible field, or the box around a Shapes
layer's shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The region choice meaning "all of the image".
WHOLE = "whole image"
#: The region choice meaning "the part of the image the canvas shows now".
VISIBLE = "visible field"


def shapes_layers(viewer: Any) -> list:
    """The viewer's Shapes layers (each may hold a drawn rectangle or polygon: the region)."""
    from napari.layers import Shapes

    return [layer for layer in viewer.layers if isinstance(layer, Shapes)]


def region_choices(viewer: Any) -> list[tuple[str, Any]]:
    """(label, value) choices: the whole image, the visible field, then one per Shapes layer."""
    return [(WHOLE, None), (VISIBLE, VISIBLE)] + [(f"shapes: {layer.name}", layer) for layer in shapes_layers(viewer)]


def region_roi(region: Any, viewer: Any, image: Any) -> tuple[int, int, int, int] | None:
    """(y, x, h, w) in ``image``'s level-0 pixels for a region choice (None: the whole image)."""
    if isinstance(region, str) and region == VISIBLE:
        return visible_roi(viewer, image)
    return shapes_roi(region, image)


def canvas_size(viewer: Any) -> tuple[int, int] | None:
    """(height, width) of the viewer's canvas in screen pixels; None without a window."""
    try:
        return tuple(int(v) for v in viewer.window._qt_viewer.canvas.size)  # napari has no public accessor
    except AttributeError:
        return None


def visible_roi(viewer: Any, image: Any) -> tuple[int, int, int, int] | None:
    """(y, x, h, w) in ``image``'s level-0 pixels of the part of it the canvas shows (2D view).

    The canvas spans ``size / zoom`` world units around the camera's centre; its corners are mapped
    world -> data through the image layer (scale and translate agree, as for shapes). None when the view
    misses the image or there is no canvas (then the whole image is used).
    """
    size = canvas_size(viewer)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    if size is None or camera.zoom <= 0:
        return None
    center = np.asarray(camera.center, float)[-2:]
    half = np.asarray(size, float) / camera.zoom / 2
    lead = np.zeros(image.ndim - 2)  # leading (slice) axes of a stack: the box is in the last two
    corners = [np.concatenate([lead, center + sign * half]) for sign in (-1.0, 1.0)]
    return _pixel_box(corners, image)


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
    return _pixel_box(world, image)


def _pixel_box(world_points: list, image: Any) -> tuple[int, int, int, int] | None:
    """(y, x, h, w) of the image pixels whose centres the box around ``world_points`` covers, clipped to
    the image's level-0 size; None when it misses the image. Points map world -> data through the layer."""
    pixels = np.array([np.asarray(image.world_to_data(w), float)[-2:] for w in world_points])
    shape = (image.data[0] if image.multiscale else image.data).shape[:2]
    y0, x0 = np.maximum(np.floor(pixels.min(axis=0) + 0.5), 0).astype(int)
    y1, x1 = np.minimum(np.ceil(pixels.max(axis=0) + 0.5), shape).astype(int)
    if y1 <= y0 or x1 <= x0:
        return None
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)

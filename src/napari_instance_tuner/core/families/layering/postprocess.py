"""Algorithm 1 of the layering paper: instances are the connected components of each layer.

1. threshold the foreground F_raw at tau; 2. drop foreground components smaller than S_min;
3-6. each foreground pixel goes to the layer where L_raw is largest; 7-8. (overlaps allowed) it also
goes to every other layer where L_raw > tau; 11. every connected component of a layer with at least
S_min pixels is an object.

The algorithm leaves implicit that layers are restricted to the foreground F (otherwise every
background pixel would join a layer); that is done here. The arg-max of line 5 does not depend on the
parameters and is computed once per map set and cached in ``maps.extra``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...family import Instances, Maps
from ...params import param


@dataclass(frozen=True)
class LayeringParams:
    """Post-processing parameters (sizes in pixels of the image)."""

    threshold: float = param(0.5, 0.0, 1.0, "tau: foreground threshold, and the layer threshold for overlaps", 0.01)
    min_size: int = param(250, 0, 20000, "S_min: drop foreground parts and layer components smaller than this", 10)
    allow_overlaps: bool = param(True, description="a pixel may belong to several layers (objects may overlap)")


def layer_stack(maps: Maps) -> np.ndarray:
    """The layering maps as one float32 (N, H, W) array (cached in ``maps.extra["layers"]``)."""
    if "layers" not in maps.extra:
        names = sorted((k for k in maps.arrays if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
        maps.extra["layers"] = np.stack([maps.arrays[k] for k in names]) if names else np.zeros((0, *maps.shape))
    return maps.extra["layers"]


def _argmax(maps: Maps, layers: np.ndarray) -> np.ndarray:
    if "argmax" not in maps.extra:
        maps.extra["argmax"] = layers.argmax(axis=0).astype(np.uint8)
    return maps.extra["argmax"]


def postprocess(maps: Maps, params: LayeringParams) -> Instances:
    """Algorithm 1.

    Parameters
    ----------
    maps : Maps
        ``"foreground"`` float32 (H, W) and ``"layer_1"`` ... ``"layer_N"`` float32 (H, W) in [0, 1].
    params : LayeringParams

    Returns
    -------
    Instances
        ``masks`` bool (K, H, W), one per object (overlapping objects keep their overlap); ``labels``
        uint32 (H, W) flattened for display (larger objects first, so smaller ones stay visible where
        objects overlap); ``scores`` float32 (K,), each object's mean layer activation.
    """
    tau = float(params.threshold)
    min_size = int(params.min_size)
    fg = maps.arrays["foreground"]
    layers = layer_stack(maps)
    height, width = fg.shape
    foreground = (fg > tau).astype(np.uint8)
    _, comp, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8, ltype=cv2.CV_32S)
    small = stats[:, cv2.CC_STAT_AREA] < min_size
    small[0] = True
    if small[1:].any():
        foreground = (~small[comp]).view(np.uint8)
    objects: list[tuple[int, tuple[slice, slice], np.ndarray, float]] = []  # (area, box, mask, score)
    if layers.shape[0] and foreground.any():
        best = _argmax(maps, layers)
        for k in range(layers.shape[0]):
            member = best == k
            if params.allow_overlaps:
                member |= layers[k] > tau
            member &= foreground.view(bool)
            if not member.any():
                continue
            _, comp, stats, _ = cv2.connectedComponentsWithStats(member.view(np.uint8), connectivity=8,
                                                                 ltype=cv2.CV_32S)
            for c in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_size) + 1:
                x, y, w, h, area = stats[c]
                box = (slice(y, y + h), slice(x, x + w))
                mask = comp[box] == c
                objects.append((int(area), box, mask, float(layers[k][box][mask].mean())))
    objects.sort(key=lambda o: -o[0])
    masks = np.zeros((len(objects), height, width), bool)
    labels = np.zeros((height, width), np.uint32)
    for i, (_, box, mask, _) in enumerate(objects):
        masks[i][box] = mask
        labels[box][mask] = i + 1
    scores = np.array([o[3] for o in objects], np.float32)
    return Instances(labels=labels, masks=masks, scores=scores)

"""Algorithm 1 of the layering paper: instances are the connected components of each layer.

1. threshold the foreground F_raw at tau; 2. drop foreground components smaller than S_min;
3-6. each foreground pixel goes to the layer where L_raw is largest; 7-8. (overlaps allowed) it also
goes to every other layer where L_raw > tau; 11. every connected component of a layer with at least
S_min pixels is an object.

The algorithm leaves implicit that layers are restricted to the foreground F (otherwise every
background pixel would join a layer); that is done here. The arg-max of line 5 does not depend on the
parameters and is computed once per map set and cached in ``maps.extra``. For speed, lines 3-11 run
per foreground component, on its bounding box: a connected part of a layer inside F lies in exactly one
component of F, so the result is the same as running them on the whole image. One addition: where
several layers exceed tau over exactly the same pixels (lines 7-8), the literal algorithm reports the
same object once per layer; it is kept once here (with the highest mean activation as its score).

One deliberate extension, off by default: ``fill_gaps`` > 0. Line 11 drops the layer components smaller
than S_min, so where the arg-max layer flickers inside an object (at crossings, at worm ends) those
foreground pixels end up in no object, and the object loses them. With ``fill_gaps`` = d, each such
pixel joins the nearest object of its foreground component if one lies within d pixels. On BBBC010
validation this raised mean AP (docs/benchmarks.md); 0 is the paper's algorithm exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...family import Instances, Maps
from ...params import param
from ...sparse_masks import SparseMasks


@dataclass(frozen=True)
class LayeringParams:
    """Post-processing parameters (sizes in pixels of the image)."""

    threshold: float = param(0.5, 0.0, 1.0, "tau: foreground threshold, and the layer threshold for overlaps", 0.01)
    min_size: int = param(250, 0, 20000, "S_min: drop foreground parts and layer components smaller than this", 10)
    allow_overlaps: bool = param(True, description="a pixel may belong to several layers (objects may overlap)")
    fill_gaps: float = param(0.0, 0.0, 20.0, "foreground pixels left in no object join the nearest object within "
                             "this many pixels (0: Algorithm 1 as published)", 0.5)


def _fill_gaps(pieces: list[tuple[int, int, np.ndarray]], inside: np.ndarray, distance: float) -> list:
    """Give the pixels of ``inside`` that no object holds to the nearest object within ``distance``.

    Parameters
    ----------
    pieces : list of (int, int, np.ndarray)
        The objects of one foreground component: (row, column) of each one's box in the component's
        bounding box, and its bool mask in that box.
    inside : np.ndarray
        bool (h, w): the component, in its bounding box.
    distance : float
        Largest Euclidean distance in pixels from a pixel to the object it joins.

    Returns
    -------
    list of (int, int, np.ndarray)
        ``pieces`` with the grown objects' boxes and masks replaced.
    """
    from scipy import ndimage as ndi  # deferred: scipy

    owner = np.zeros(inside.shape, np.int32)  # 1 + index of an object holding the pixel (the smallest wins)
    for i in sorted(range(len(pieces)), key=lambda i: -int(pieces[i][2].sum())):
        r0, c0, mask = pieces[i]
        owner[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]][mask] = i + 1
    orphan = inside & (owner == 0)
    if not orphan.any():
        return pieces
    dist, (iy, ix) = ndi.distance_transform_edt(owner == 0, return_indices=True)
    rows, cols = np.nonzero(orphan & (dist <= distance))
    gainer = owner[iy[rows, cols], ix[rows, cols]] - 1
    out = list(pieces)
    order = np.argsort(gainer, kind="stable")
    for i, start, count in zip(*np.unique(gainer[order], return_index=True, return_counts=True)):
        take = order[start : start + count]
        r0, c0, mask = pieces[i]
        new_r0, new_c0 = min(r0, int(rows[take].min())), min(c0, int(cols[take].min()))
        new_r1 = max(r0 + mask.shape[0], int(rows[take].max()) + 1)
        new_c1 = max(c0 + mask.shape[1], int(cols[take].max()) + 1)
        grown = np.zeros((new_r1 - new_r0, new_c1 - new_c0), bool)
        grown[r0 - new_r0 : r0 - new_r0 + mask.shape[0], c0 - new_c0 : c0 - new_c0 + mask.shape[1]] = mask
        grown[rows[take] - new_r0, cols[take] - new_c0] = True
        out[i] = (new_r0, new_c0, grown)
    return out


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
        ``objects`` (boxes and cropped masks), one per object (overlapping objects keep their overlap); ``labels``
        uint32 (H, W) flattened for display (larger objects first, so smaller ones stay visible where
        objects overlap); ``scores`` float32 (K,), each object's mean activation in its layer.
    """
    tau = float(params.threshold)
    min_size = int(params.min_size)
    fill = float(params.fill_gaps)
    fg = maps.arrays["foreground"]
    layers = layer_stack(maps)
    height, width = fg.shape
    objects: list[tuple[int, tuple[slice, slice], np.ndarray, float]] = []  # (area, box, mask, score)
    n_layers = layers.shape[0]
    if n_layers:
        best = _argmax(maps, layers)
        # Lines 1-2. Every object of a layer lies inside one foreground component, so lines 3-11 run on
        # each component's bounding box only (the foreground is a small part of most images).
        _, comp, stats, _ = cv2.connectedComponentsWithStats((fg > tau).view(np.uint8), connectivity=8,
                                                             ltype=cv2.CV_32S)
        ks = np.arange(n_layers, dtype=np.uint8)[:, None, None]
        for c in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= max(min_size, 1)) + 1:
            x0, y0, w, h = stats[c, :4]
            box = (slice(y0, y0 + h), slice(x0, x0 + w))
            inside = comp[box] == c
            member = best[box][None] == ks  # lines 4-6: the arg-max layer
            if params.allow_overlaps:  # lines 7-8
                member |= layers[(slice(None), *box)] > tau
            member &= inside[None]
            found: dict[tuple, list] = {}  # the component's objects: key -> [row, column, mask, score]
            for k in np.flatnonzero(member.any(axis=(1, 2))):
                _, sub, sub_stats, _ = cv2.connectedComponentsWithStats(member[k].view(np.uint8), connectivity=8,
                                                                        ltype=cv2.CV_32S)
                for j in np.flatnonzero(sub_stats[1:, cv2.CC_STAT_AREA] >= min_size) + 1:  # line 11
                    sx, sy, sw, sh, _ = sub_stats[j]
                    mask = sub[sy : sy + sh, sx : sx + sw] == j
                    score = float(layers[k][y0 + sy : y0 + sy + sh, x0 + sx : x0 + sx + sw][mask].mean())
                    key = (sy, sx, mask.tobytes())  # the same pixels found in another layer are the same object
                    if key in found:
                        found[key][3] = max(found[key][3], score)
                    else:
                        found[key] = [int(sy), int(sx), mask, score]
            pieces = [(r, c, m) for r, c, m, _ in found.values()]
            scores = [score for *_, score in found.values()]
            if fill > 0 and pieces:
                pieces = _fill_gaps(pieces, inside, fill)
            for (r, c, mask), score in zip(pieces, scores):
                obj_box = (slice(y0 + r, y0 + r + mask.shape[0]), slice(x0 + c, x0 + c + mask.shape[1]))
                objects.append((int(mask.sum()), obj_box, mask, score))
    objects.sort(key=lambda o: -o[0])
    found = SparseMasks.from_crops([(box[0].start, box[1].start, mask) for _, box, mask, _ in objects], (height, width))
    scores = np.array([o[3] for o in objects], np.float32)
    return Instances(labels=found.to_labels(winner="last"), objects=found, scores=scores)

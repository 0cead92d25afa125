"""Exact, fast Hausdorff distances between objects: the engine behind the GlaS Hausdorff metrics.

A directed distance measures only the pixels of A outside B, against B's inner boundary, by brute
force, a KD-tree or a block-wise branch and bound (:func:`_max_distance`).
:func:`_nearest_by_hausdorff` finds the object of the other side with the smallest Hausdorff
distance, visiting candidates in order of a bounding-box lower bound. Private; the public
functions (:func:`~napari_instance_tuner.core.evaluation.metrics.hausdorff_distance`,
:func:`~napari_instance_tuner.core.evaluation.metrics.object_hausdorff`) are in :mod:`.glas`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._instances import _Instances, _Object

# Above this many query pixels the directed distance is computed block-wise with pruning.
_DIRECT_QUERY_LIMIT = 4096
_BLOCK = 16
# Up to this many (query pixel, boundary pixel) pairs distances are computed by brute force.
_BRUTE_FORCE_LIMIT = 4096


def _max_distance(sub: np.ndarray, r0: int, c0: int, target: _Object) -> float:
    """max over the True pixels of ``sub`` (offset (r0, c0)) of the distance to ``target``.

    The True pixels must lie outside ``target`` (distances are taken to its boundary). Small
    sets are compared by brute force, medium ones through a KD-tree of the target's boundary.
    Large sets use an exact branch and bound: the pixels are grouped in 16x16 blocks; one pixel
    per block gives a lower bound L of the maximum, and the distance d(c) of a block's centre
    bounds every pixel of the block by d(c) + (16 - 1) / sqrt(2) (distance is 1-Lipschitz), so
    only the pixels of blocks with d(c) + (16 - 1) / sqrt(2) > L are queried.
    """
    n = int(np.count_nonzero(sub))
    if n == 0:
        return 0.0
    bnd = target.boundary()
    if n * bnd.shape[0] <= _BRUTE_FORCE_LIMIT:
        rr, cc = np.nonzero(sub)
        dr = (rr + r0)[:, None] - bnd[None, :, 0]
        dc = (cc + c0)[:, None] - bnd[None, :, 1]
        return float(math.sqrt((dr * dr + dc * dc).min(axis=1).max()))
    tree = target.boundary_tree()
    if n <= _DIRECT_QUERY_LIMIT:
        rr, cc = np.nonzero(sub)
        d, _ = tree.query(np.column_stack((rr + r0, cc + c0)).astype(np.float64), k=1)
        return float(d.max())
    s = _BLOCK
    h, w = sub.shape
    nbr, nbc = -(-h // s), -(-w // s)
    pad = np.zeros((nbr * s, nbc * s), bool)
    pad[:h, :w] = sub
    blocks = pad.reshape(nbr, s, nbc, s).transpose(0, 2, 1, 3).reshape(nbr, nbc, s * s)
    bi, bj = np.nonzero(blocks.any(axis=2))
    cells = blocks[bi, bj]  # (m, s*s)
    first = cells.argmax(axis=1)
    rep = np.column_stack((bi * s + first // s + r0, bj * s + first % s + c0)).astype(np.float64)
    lower = float(tree.query(rep, k=1)[0].max())
    centres = np.column_stack((bi * s + r0, bj * s + c0)).astype(np.float64) + (s - 1) / 2.0
    bound = tree.query(centres, k=1)[0] + (s - 1) / math.sqrt(2.0)
    keep = bound + 1e-9 > lower
    k, q = np.nonzero(cells[keep])
    if k.size == 0:
        return lower
    pts = np.column_stack((bi[keep][k] * s + q // s + r0, bj[keep][k] * s + q % s + c0))
    return max(lower, float(tree.query(pts.astype(np.float64), k=1)[0].max()))


def _directed(a: _Object, b: _Object) -> float:
    """max over pixels x of a of the distance from x to the nearest pixel of b (0 inside b)."""
    return _max_distance(a.minus(b), a.r0, a.c0, b)


def _hd_objects(a: _Object, b: _Object) -> float:
    return max(_directed(a, b), _directed(b, a))


@dataclass
class _Geometry:
    """Objects of one side with their bounding boxes and extreme pixels as arrays."""

    objects: list[_Object]
    boxes: np.ndarray  # float (n, 4): first row, last row, first col, last col
    extremes: np.ndarray  # float (n, 4, 2)

    @classmethod
    def of(cls, inst: _Instances) -> _Geometry:
        objs = inst.objects() if inst.n else []
        boxes = np.array([(o.r0, o.r1 - 1, o.c0, o.c1 - 1) for o in objs], np.float64).reshape(-1, 4)
        ext = np.array([o.extremes() for o in objs], np.float64).reshape(-1, 4, 2)
        return cls(objs, boxes, ext)


def _point_box_distance(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distances of points (..., 2) to boxes (..., 4) (broadcast), float."""
    dr = np.maximum(0.0, np.maximum(boxes[..., 0] - points[..., 0], points[..., 0] - boxes[..., 1]))
    dc = np.maximum(0.0, np.maximum(boxes[..., 2] - points[..., 1], points[..., 1] - boxes[..., 3]))
    return np.hypot(dr, dc)


def _nearest_by_hausdorff(x: _Object, x_box: np.ndarray, x_ext: np.ndarray, cands: _Geometry) -> tuple[int, float]:
    """Index and Hausdorff distance of the candidate with the smallest Hausdorff distance to x.

    Exact: candidates are visited in order of a lower bound (the largest distance from an extreme
    pixel of one object to the bounding box of the other, which never exceeds the Hausdorff
    distance) and the search stops once the bound exceeds the best distance found.
    Ties: smallest index.
    """
    if not cands.objects:
        return -1, math.inf
    lb1 = _point_box_distance(x_ext[None, :, :], cands.boxes[:, None, :]).max(axis=1)
    lb2 = _point_box_distance(cands.extremes, x_box[None, None, :]).max(axis=1)
    lb = np.maximum(lb1, lb2)
    best_k, best_d = -1, math.inf
    for k in np.lexsort((np.arange(lb.size), lb)):  # by bound, then index
        if lb[k] > best_d or (lb[k] == best_d and k > best_k):
            break  # this and all later candidates can at best tie with a smaller index
        c = cands.objects[k]
        d = _directed(x, c)
        if d > best_d:
            continue
        d = max(d, _directed(c, x))
        if d < best_d or (d == best_d and k < best_k):
            best_k, best_d = int(k), d
    return best_k, best_d

"""GlaS challenge object-level metrics: object F1, object Dice, object Hausdorff, Hausdorff distance.

The definitions of [GlaS], with the edge cases of the official MATLAB code [GlaS-code]
(``F1score.m``, ``ObjectDice.m``, ``ObjectHausdorff.m``, ``Hausdorff.m``); the sources are listed in
the package docstring (:mod:`napari_instance_tuner.core.evaluation.metrics`). The ``_*_from_pair`` and
``_*_terms`` helpers work on a shared :class:`~._intersections._Pair` and are reused by
:func:`~napari_instance_tuner.core.evaluation.metrics.evaluate`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ...errors import InputImageError
from ._hausdorff import _Geometry, _hd_objects, _nearest_by_hausdorff
from ._instances import _check_numeric, _fail, _parse
from ._intersections import _Pair

# --------------------------------------------------------------------------------------------
# GlaS object-level F1
# --------------------------------------------------------------------------------------------


def _f1_from_pair(c: _Pair) -> dict[str, float]:
    n_p, n_g = c.p.n, c.g.n
    if n_p == 0 and n_g == 0:
        return {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    best = c.best_gt_for_pred()
    best_inter = c.inter_lookup(np.arange(n_p), best)
    gt_area = _partner_area(best, c.g.areas)
    # strictly more than half of the GT object's area (integer test, exact at 50 %)
    cand = (best >= 0) & (2 * best_inter > gt_area)
    # each GT object is matched at most once: one TP per distinct GT object among the
    # candidates, the other candidates are FPs (only happens with overlapping stacks)
    cp = np.flatnonzero(cand)
    tp = int(np.unique(best[cp]).size)
    fp = n_p - tp
    fn = n_g - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def object_f1(pred: ArrayLike, gt: ArrayLike) -> dict[str, float]:
    """GlaS object-level (detection) F1 score of one image.

    For each predicted object S the ground-truth object G with the largest intersection is its
    reference (ties: smallest label / index). S is a true positive when
    ``|S AND G| > 0.5 * |G|``, otherwise a false positive; GT objects not matched by any true
    positive are false negatives. ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``,
    ``f1 = 2 precision recall / (precision + recall)``.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) (0 = background) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` (int) and ``precision``, ``recall``, ``f1`` (float in [0, 1]).

    Notes
    -----
    * Threshold: *strictly* more than 50 % of the GT object's area, as in the official MATLAB
      ``F1score.m`` (``areaOverlap/areaGTObj > 0.5``) [GlaS-code]. The paper / web page text says
      "at least 50 %"; the code decided the ranking, so an overlap of exactly 50 % is a false
      positive here.
    * Each GT object is matched at most once. With label images this is automatic (two disjoint
      objects cannot both cover more than half of one object); with overlapping stacks, when
      several predictions qualify for the same GT object, one is the true positive and the others
      are false positives (the official code never meets this case).
    * Both images empty: ``precision = recall = f1 = 1.0`` (``F1score.m`` returns 1). Exactly one
      empty: ``f1 = 0.0`` (``F1score.m`` returns 0) and ``precision = recall = 0.0``. When both have
      objects but TP = 0, ``f1 = 0.0`` (the MATLAB formula would give 0/0 = NaN).

    Raises
    ------
    InputImageError
        On mismatched shapes, non-integer / negative / NaN labels, wrong dimensionality.
    """
    return _f1_from_pair(_Pair.build(pred, gt))


# --------------------------------------------------------------------------------------------
# GlaS object-level Dice
# --------------------------------------------------------------------------------------------


def _partner_area(best: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Area of each chosen partner (0 where there is none, ``best == -1``)."""
    if areas.size == 0:
        return np.zeros(best.shape, np.int64)
    return np.where(best >= 0, areas[np.maximum(best, 0)], 0)


def _weighted(areas: np.ndarray, values: np.ndarray) -> float:
    """Area-weighted mean; 0.0 for no objects (the empty side's sum has no terms)."""
    if areas.size == 0:
        return 0.0
    return float(np.sum(areas * values) / np.sum(areas))


def _dice_terms(c: _Pair) -> tuple[float, float]:
    """(sum_i w_i Dice(S_i, G*(S_i)), sum_j w~_j Dice(G_j, S*(G_j))); weights normalised per image."""
    bp = c.best_gt_for_pred()
    inter_p = c.inter_lookup(np.arange(c.p.n), bp)
    dice_p = 2.0 * inter_p / (c.p.areas + _partner_area(bp, c.g.areas))
    bg = c.best_pred_for_gt()
    inter_g = c.inter_lookup(bg, np.arange(c.g.n))
    dice_g = 2.0 * inter_g / (c.g.areas + _partner_area(bg, c.p.areas))
    return _weighted(c.p.areas, dice_p), _weighted(c.g.areas, dice_g)


def _object_dice_from_pair(c: _Pair) -> float:
    if c.p.n == 0 and c.g.n == 0:
        return 1.0
    if c.p.n == 0 or c.g.n == 0:
        return 0.0
    t_pred, t_gt = _dice_terms(c)
    return 0.5 * (t_pred + t_gt)


def object_dice(pred: ArrayLike, gt: ArrayLike) -> float:
    """GlaS object-level Dice index of one image.

    ``Dice_obj = 1/2 [ sum_i gamma_i Dice(S_i, G*(S_i)) + sum_j sigma_j Dice(G_j, S*(G_j)) ]`` with
    ``gamma_i = |S_i| / sum_p |S_p|`` (predicted objects), ``sigma_j = |G_j| / sum_q |G_q|`` (GT
    objects), ``G*(S_i)`` the GT object with the largest intersection with ``S_i`` (ties: smallest
    label / index), ``S*(G_j)`` likewise, and ``Dice(A, B) = 2|A AND B| / (|A| + |B|)``, which is 0
    when nothing overlaps [GlaS], [GlaS-code] ``ObjectDice.m``.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both are empty, 0.0 when exactly one is empty (both as in
        ``ObjectDice.m``).

    Notes
    -----
    For stacks with overlapping objects the weights use the sum of the object areas (the
    paper's definition), which equals the foreground area (``ObjectDice.m``) for label images.
    """
    return _object_dice_from_pair(_Pair.build(pred, gt))


# --------------------------------------------------------------------------------------------
# Hausdorff distance
# --------------------------------------------------------------------------------------------


def hausdorff_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Hausdorff distance between two pixel sets (Euclidean, in pixels).

    ``H(A, B) = max( max_{a in A} min_{b in B} |a - b|, max_{b in B} min_{a in A} |a - b| )`` over
    pixel centres, as ``Hausdorff.m`` of the official GlaS code [GlaS-code].

    Parameters
    ----------
    a, b : array_like
        Masks of shape (H, W): any non-zero / True pixel belongs to the set (a label image is
        treated as its foreground).

    Returns
    -------
    float
        0.0 when both are empty, ``inf`` when exactly one is empty (as ``Hausdorff.m``).
    """
    aa, bb = np.asarray(a), np.asarray(b)
    for name, arr in (("a", aa), ("b", bb)):
        if arr.ndim != 2:
            raise _fail(name, f"has shape {arr.shape}; expected a 2-D mask (H, W)")
        _check_numeric(arr, name)
    if aa.shape != bb.shape:
        raise InputImageError(f"a and b differ in shape: {aa.shape} vs {bb.shape}")
    ma, mb = aa != 0, bb != 0
    ea, eb = not ma.any(), not mb.any()
    if ea and eb:
        return 0.0
    if ea or eb:
        return math.inf
    oa = _parse(ma, "a", allow_binary=True).objects()[0]
    ob = _parse(mb, "b", allow_binary=True).objects()[0]
    return _hd_objects(oa, ob)


def _hausdorff_terms(c: _Pair) -> tuple[float, float]:
    """(sum_i w_i H(S_i, G*(S_i)), sum_j w~_j H(G_j, S*(G_j))), weights normalised per image."""
    gp, gg = _Geometry.of(c.p), _Geometry.of(c.g)
    cache: dict[tuple[int, int], float] = {}

    def pair_hd(i: int, j: int) -> float:
        key = (i, j)
        if key not in cache:
            cache[key] = _hd_objects(gp.objects[i], gg.objects[j])
        return cache[key]

    d_pred = np.empty(c.p.n)
    for i, j in enumerate(c.best_gt_for_pred()):
        if j >= 0:
            d_pred[i] = pair_hd(i, int(j))
        else:  # no overlap: GT object with the minimum Hausdorff distance (inf if there is none)
            j2, d = _nearest_by_hausdorff(gp.objects[i], gp.boxes[i], gp.extremes[i], gg)
            d_pred[i] = d
            if j2 >= 0:
                cache[(i, j2)] = d
    d_gt = np.empty(c.g.n)
    for j, i in enumerate(c.best_pred_for_gt()):
        if i >= 0:
            d_gt[j] = pair_hd(int(i), j)
        else:
            i2, d = _nearest_by_hausdorff(gg.objects[j], gg.boxes[j], gg.extremes[j], gp)
            d_gt[j] = d
            if i2 >= 0:
                cache[(i2, j)] = d
    return _weighted(c.p.areas, d_pred), _weighted(c.g.areas, d_gt)


def _object_hausdorff_from_pair(c: _Pair) -> tuple[float, float, float]:
    if c.p.n == 0 and c.g.n == 0:
        return 0.0, 0.0, 0.0
    t_pred, t_gt = _hausdorff_terms(c)
    return 0.5 * (t_pred + t_gt), t_pred, t_gt


def object_hausdorff(pred: ArrayLike, gt: ArrayLike) -> float:
    """GlaS object-level Hausdorff distance of one image, in pixels.

    ``H_obj = 1/2 [ sum_i gamma_i H(S_i, G*(S_i)) + sum_j sigma_j H(G_j, S*(G_j)) ]`` with the
    weights and the maximal-overlap partners of :func:`object_dice` and ``H`` the Hausdorff
    distance of :func:`hausdorff_distance`. When an object overlaps no object of the other side,
    its partner is the object of the other side with the *minimum Hausdorff distance* to it
    (ties: smallest label / index) [GlaS] "Shape similarity", [GlaS-code] ``ObjectHausdorff.m``.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    float
        >= 0. ``0.0`` when both are empty (``ObjectHausdorff.m`` runs no loop iteration and
        returns (0 + 0)/2). ``inf`` when exactly one is empty: the objects of the non-empty side
        then have no candidate partner, and ``Hausdorff.m`` defines the distance between a
        non-empty and an empty set as ``Inf`` (``ObjectHausdorff.m`` itself fails on this case by
        indexing an empty list; there is no finite official value).

    Notes
    -----
    Exact pixel-set distances, computed fast: only the pixels of A outside B are measured, against
    B's inner boundary (the nearest pixel of B to a point outside B is always a boundary pixel),
    by brute force, a KD-tree or, for large sets, a block-wise branch and bound; the
    nearest-object search visits candidates in order of a bounding-box lower bound and stops
    early. About 20 ms for a 775x522 GlaS image with 20 glands and 0.1 s for 1024x1024 with 300
    objects; the cost grows roughly linearly with the number of objects.
    """
    return _object_hausdorff_from_pair(_Pair.build(pred, gt))[0]

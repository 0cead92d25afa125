"""Detection-style metrics: average precision at IoU thresholds [DSB] and the Aggregated Jaccard Index [AJI].

Also holds :data:`DEFAULT_AP_THRESHOLDS`, the IoU thresholds of the layering paper. The sources are
listed in the package docstring (:mod:`napari_instance_tuner.core.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from ...errors import InputImageError
from ._intersections import _best_partner, _Pair

#: IoU thresholds of the layering paper (DSB2018 uses 0.5:0.05:0.95).
DEFAULT_AP_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

#: IoU thresholds of the Kaggle 2018 Data Science Bowl score: 0.5, 0.55, ..., 0.95.
DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


# --------------------------------------------------------------------------------------------
# Average precision (DSB2018 / layering paper)
# --------------------------------------------------------------------------------------------


def _ap_key(t: float) -> str:
    return f"ap{round(t * 100, 6):g}"


def _n_matches(pi: np.ndarray, gi: np.ndarray, iou: np.ndarray) -> int:
    """Size of a maximum one-to-one matching among the given candidate pairs."""
    if pi.size == 0:
        return 0
    if np.unique(pi).size == pi.size and np.unique(gi).size == gi.size:
        return int(pi.size)  # already one-to-one (always the case for label images and t >= 0.5)
    rows, r_inv = np.unique(pi, return_inverse=True)
    cols, c_inv = np.unique(gi, return_inverse=True)
    k = min(rows.size, cols.size)
    cost = np.zeros((rows.size, cols.size))
    # maximise the number of matches first, then the summed IoU (stardist's matching criterion)
    cost[r_inv, c_inv] = -(1.0 + iou / (2.0 * k))
    r, cidx = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[r, cidx] < 0))


def _ap_from_pair(c: _Pair, thresholds: Sequence[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    iou = c.iou()
    for t in thresholds:
        if c.p.n == 0 and c.g.n == 0:
            out[_ap_key(t)] = 1.0
            continue
        ok = iou > t
        tp = _n_matches(c.pi[ok], c.gi[ok], iou[ok])
        out[_ap_key(t)] = tp / (c.p.n + c.g.n - tp)  # TP / (TP + FP + FN)
    out["mean_ap"] = float(np.mean([out[_ap_key(t)] for t in thresholds]))
    return out


def _check_thresholds(thresholds: Any) -> tuple[float, ...]:
    try:
        ts = tuple(float(t) for t in thresholds)
    except TypeError as exc:
        raise InputImageError(f"thresholds must be a sequence of numbers, got {thresholds!r}") from exc
    if not ts:
        raise InputImageError("thresholds is empty; give at least one IoU threshold")
    for t in ts:
        if not (0.0 <= t < 1.0):
            raise InputImageError(f"IoU threshold {t} is outside [0, 1)")
    if len({_ap_key(t) for t in ts}) != len(ts):
        raise InputImageError(f"thresholds contain duplicates: {ts}")
    return ts


def average_precision(
    pred: ArrayLike, gt: ArrayLike, thresholds: Sequence[float] = DEFAULT_AP_THRESHOLDS
) -> dict[str, float]:
    """Average precision at IoU thresholds, DSB2018 / layering-paper convention.

    At threshold t a predicted and a GT object may be matched when ``IoU > t``; matches are
    one-to-one. ``AP_t = TP / (TP + FP + FN)`` with TP the number of matches, FP the unmatched
    predictions and FN the unmatched GT objects [DSB].

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W), same (H, W).
    thresholds : sequence of float, optional
        IoU thresholds in [0, 1); default (0.5, 0.6, 0.7, 0.8, 0.9).

    Returns
    -------
    dict[str, float]
        ``"ap50"``, ``"ap60"``, ... (key ``f"ap{100 t:g}"``, e.g. 0.75 -> ``"ap75"``) and
        ``"mean_ap"``, the mean over the thresholds.

    Notes
    -----
    For t >= 0.5 a pair with IoU > t is unique for disjoint objects, so with label images the
    matching is trivial. With overlapping stacks (or t < 0.5) several pairs may compete; a
    maximum-cardinality matching (ties: largest summed IoU) is found with the Hungarian
    algorithm, as stardist's ``matching`` does. Both empty: every AP is 1.0 (no object to find,
    none predicted; DSB's formula would be 0/0); exactly one empty: 0.0.
    """
    ts = _check_thresholds(thresholds)
    return _ap_from_pair(_Pair.build(pred, gt), ts)


def dsb_score(pred: ArrayLike, gt: ArrayLike) -> float:
    """The Kaggle 2018 Data Science Bowl score of one image [DSB].

    The mean over IoU thresholds t = 0.5, 0.55, ..., 0.95 (:data:`DSB_THRESHOLDS`) of
    ``TP / (TP + FP + FN)``, with matches as in :func:`average_precision`.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both are empty, 0.0 when exactly one is.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 8), int); gt[:, :4] = 1
    >>> pred = np.zeros((4, 8), int); pred[:, :3] = 1   # IoU 0.75: a match for t < 0.75
    >>> round(dsb_score(pred, gt), 2)                    # 5 of the 10 thresholds
    0.5
    """
    return _ap_from_pair(_Pair.build(pred, gt), DSB_THRESHOLDS)["mean_ap"]


# --------------------------------------------------------------------------------------------
# Aggregated Jaccard Index
# --------------------------------------------------------------------------------------------


def _aji_from_pair(c: _Pair) -> float:
    if c.p.n == 0 and c.g.n == 0:
        return 1.0
    iou = c.iou()
    best = _best_partner(c.gi, c.pi, iou, c.g.n)  # per GT object: pred with max IoU
    has = best >= 0
    j = np.flatnonzero(has)
    inter = c.inter_lookup(best[j], j)
    C = int(inter.sum())
    U = int(np.sum(c.g.areas[j] + c.p.areas[best[j]] - inter))
    U += int(c.g.areas[~has].sum())  # GT objects with no overlapping prediction
    used = np.zeros(c.p.n, bool)
    used[best[j]] = True
    U += int(c.p.areas[~used].sum())  # predictions never chosen
    return C / U


def aggregated_jaccard_index(pred: ArrayLike, gt: ArrayLike) -> float:
    """Aggregated Jaccard Index (AJI) of Kumar et al. (2017).

    For each GT object G_j take the predicted object S with the largest IoU among those that
    overlap G_j (ties: smallest label / index); add ``|G_j AND S|`` to C and ``|G_j OR S|`` to U.
    A GT object that no prediction overlaps adds ``|G_j|`` to U. Finally the area of every
    predicted object that was never chosen is added to U. ``AJI = C / U`` [AJI].

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both are empty (convention; the MoNuSeg code gives 0/0), 0.0 when
        exactly one is empty.

    Notes
    -----
    Follows the final MoNuSeg ``aggregated_jaccard_index.m`` (2018-07-17): a predicted object may
    be chosen by several GT objects (its pixels then enter U once per GT object, "a predicted
    nucleus is allowed to match multiple gts"), and each chosen prediction is removed from the
    unused set once. The earlier script's bug (a GT object without overlap grabbing prediction
    no. 1) is not reproduced. This is AJI, not the one-to-one AJI+ of Graham et al.
    """
    return _aji_from_pair(_Pair.build(pred, gt))


#: Short alias of :func:`aggregated_jaccard_index`.
aji = aggregated_jaccard_index

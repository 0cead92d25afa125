"""All metrics of one image at once (:func:`evaluate`) and their data-set pooling (:func:`aggregate`).

:func:`glas_terms` and :func:`pooled_f1_dice` are the cheap pair for auto-tuning on the pooled GlaS figures
(object F1 and object Dice only: no Hausdorff, AP or AJI per trial).

:data:`EVALUATE_KEYS` and :data:`AGGREGATE_KEYS` are the keys, in order, of the two results.
:func:`aggregate` pools over a data set the official GlaS way [GlaS-GC] (sources in the package
docstring, :mod:`napari_instance_tuner.core.evaluation.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ...errors import InputImageError
from ._intersections import _Pair
from .detection import DEFAULT_AP_THRESHOLDS, DSB_THRESHOLDS, _aji_from_pair, _ap_from_pair
from .glas import _dice_terms, _f1_from_pair, _object_dice_from_pair, _object_hausdorff_from_pair
from .pixel import _pixel_from_instances

#: Keys of :func:`evaluate`, in order. The first 20 are the headline metrics and counts; the rest are the
#: per-image sums that :func:`aggregate` needs to pool over a data set the official GlaS way.
EVALUATE_KEYS: tuple[str, ...] = (
    "object_f1",
    "precision",
    "recall",
    "object_dice",
    "object_hausdorff",
    "pixel_dice",
    "pixel_iou",
    "ap50",
    "ap60",
    "ap70",
    "ap80",
    "ap90",
    "mean_ap",
    "dsb_score",
    "aji",
    "n_pred",
    "n_gt",
    "tp",
    "fp",
    "fn",
    "area_pred",
    "area_gt",
    "object_dice_pred_term",
    "object_dice_gt_term",
    "object_hausdorff_pred_term",
    "object_hausdorff_gt_term",
)

#: Keys of :func:`aggregate`, in order: the headline metrics and counts of :data:`EVALUATE_KEYS`, then the
#: data-set extras.
AGGREGATE_KEYS: tuple[str, ...] = EVALUATE_KEYS[:20] + (
    "n_images",
    "object_f1_image_mean",
    "precision_image_mean",
    "recall_image_mean",
    "object_dice_image_mean",
    "object_hausdorff_image_mean",
)


# --------------------------------------------------------------------------------------------
# All at once, and data-set aggregation
# --------------------------------------------------------------------------------------------


def evaluate(pred: ArrayLike, gt: ArrayLike) -> dict[str, float]:
    """All metrics of one image, sharing one parse and one intersection matrix.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) (0 = background) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    dict[str, float]
        Keys :data:`EVALUATE_KEYS`, in that order:

        * ``object_f1``, ``precision``, ``recall``: :func:`object_f1`;
        * ``object_dice``: :func:`object_dice`; ``object_hausdorff``: :func:`object_hausdorff`
          (pixels; ``inf`` when exactly one side is empty);
        * ``pixel_dice``, ``pixel_iou``: :func:`pixel_dice`, :func:`pixel_iou`;
        * ``ap50`` ... ``ap90``, ``mean_ap``: :func:`average_precision` at the default thresholds;
        * ``dsb_score``: :func:`dsb_score` (mean AP over IoU 0.5:0.05:0.95, the DSB2018 score);
        * ``aji``: :func:`aggregated_jaccard_index`;
        * ``n_pred``, ``n_gt``: object counts (int);
        * for :func:`aggregate`: ``tp``, ``fp``, ``fn`` (int), ``area_pred``, ``area_gt`` (sum of
          object areas, int), ``object_dice_pred_term`` / ``object_dice_gt_term`` (the two sums of
          the object Dice, weights normalised within the image; 0.0 for an empty side) and
          ``object_hausdorff_pred_term`` / ``object_hausdorff_gt_term`` (likewise).
    """
    c = _Pair.build(pred, gt)
    f1 = _f1_from_pair(c)
    dice = _object_dice_from_pair(c)
    hd, h_pred, h_gt = _object_hausdorff_from_pair(c)
    pdice, piou = _pixel_from_instances(c.p, c.g)
    ap = _ap_from_pair(c, DEFAULT_AP_THRESHOLDS)
    out: dict[str, float] = {
        "object_f1": f1["f1"],
        "precision": f1["precision"],
        "recall": f1["recall"],
        "object_dice": dice,
        "object_hausdorff": hd,
        "pixel_dice": pdice,
        "pixel_iou": piou,
        **{k: ap[k] for k in ("ap50", "ap60", "ap70", "ap80", "ap90", "mean_ap")},
        "dsb_score": _ap_from_pair(c, DSB_THRESHOLDS)["mean_ap"],
        "aji": _aji_from_pair(c),
        **_glas_terms_from_pair(c, f1),
        "object_hausdorff_pred_term": h_pred,
        "object_hausdorff_gt_term": h_gt,
    }
    return out


#: Keys of :func:`glas_terms`: what :func:`pooled_f1_dice` needs of each image.
GLAS_TERM_KEYS: tuple[str, ...] = ("n_pred", "n_gt", "tp", "fp", "fn", "area_pred", "area_gt",
                                   "object_dice_pred_term", "object_dice_gt_term")


def glas_terms(pred: ArrayLike, gt: ArrayLike) -> dict[str, float]:
    """The per-image counts and sums of the pooled GlaS object F1 and object Dice (see :func:`pooled_f1_dice`).

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) (0 = background) or instance stack bool (N, H, W), same (H, W).

    Returns
    -------
    dict[str, float]
        Keys :data:`GLAS_TERM_KEYS`, the same values as :func:`evaluate` gives them.
    """
    c = _Pair.build(pred, gt)
    return _glas_terms_from_pair(c, _f1_from_pair(c))


def _glas_terms_from_pair(c: _Pair, f1: dict) -> dict[str, float]:
    """:data:`GLAS_TERM_KEYS` of one parsed pair and its :func:`_f1_from_pair` result (shared by
    :func:`evaluate` and :func:`glas_terms`)."""
    d_pred, d_gt = _dice_terms(c)
    values = (c.p.n, c.g.n, f1["tp"], f1["fp"], f1["fn"], int(c.p.areas.sum()), int(c.g.areas.sum()), d_pred, d_gt)
    return dict(zip(GLAS_TERM_KEYS, values, strict=True))


def pooled_f1_dice(per_image: Sequence[Mapping[str, float]]) -> tuple[float, float]:
    """The official GlaS (data-set) object F1 and object Dice of several images.

    Parameters
    ----------
    per_image : sequence of dict
        One :func:`glas_terms` (or :func:`evaluate`) result per image.

    Returns
    -------
    (float, float)
        Object F1 from the TP, FP and FN summed over the images; object Dice with each object weighted by its
        area over all objects of the data set (conventions of :func:`aggregate`, which reports the same two).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((8, 8), int); gt[:4, :4] = 1; gt[5:, 5:] = 2
    >>> pooled_f1_dice([glas_terms(gt, gt), glas_terms(np.zeros_like(gt), gt)])  # the 2nd image: all missed
    (0.6666666666666666, 0.75)

    (Dice: the predicted objects all match, 1.0; half the reference area is found, 0.5.)
    """
    return _pooled_detection(per_image)[2], _pooled_dice(per_image)


def _column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=np.float64)


def _no_objects(rows: Sequence[Mapping[str, float]]) -> bool:
    return int(_column(rows, "n_pred").sum()) == 0 and int(_column(rows, "n_gt").sum()) == 0


def _pooled_detection(rows: Sequence[Mapping[str, float]]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the TP, FP and FN summed over ``rows`` (1.0 each when no object anywhere)."""
    if _no_objects(rows):
        return 1.0, 1.0, 1.0
    tp, fp, fn = (int(_column(rows, k).sum()) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _pooled_dice(rows: Sequence[Mapping[str, float]]) -> float:
    """Object Dice with object weights normalised over all objects of ``rows`` (1.0 when no object anywhere)."""
    if _no_objects(rows):
        return 1.0
    return 0.5 * (_pooled_term(_column(rows, "area_pred"), _column(rows, "object_dice_pred_term"))
                  + _pooled_term(_column(rows, "area_gt"), _column(rows, "object_dice_gt_term")))


def _pooled_term(areas: np.ndarray, terms: np.ndarray) -> float:
    total = areas.sum()
    if total == 0:
        return 0.0
    w = areas > 0  # an empty side has term 0 and weight 0 (avoid 0 * inf)
    return float(np.sum(areas[w] * terms[w]) / total)


def aggregate(per_image: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Data-set level metrics from the :func:`evaluate` dicts of several images.

    Parameters
    ----------
    per_image : sequence of dict
        One :func:`evaluate` result per image (at least one).

    Returns
    -------
    dict[str, float]
        Keys :data:`AGGREGATE_KEYS`:

        * ``object_f1``, ``precision``, ``recall``: **official GlaS**: TP, FP and FN are summed
          over all images, then precision, recall and F1 are computed once. Source: the GlaS
          grand-challenge evaluation container [GlaS-GC] (``tp = case_results["tp"].sum()`` ...),
          consistent with [GlaS] defining the counts over the test set. The per-image mean, which
          many papers report instead, is ``object_f1_image_mean`` (with ``precision_image_mean``,
          ``recall_image_mean``); the two differ in general.
        * ``object_dice``, ``object_hausdorff``: **official GlaS**: the object weights are
          normalised over *all* objects of the data set (the evaluation page sums over
          ``G = union_a G_a``, the set of all GT objects, and ``S = union_a S_a``; [GlaS-GC] sums
          the per-image terms divided by the data-set totals), not averaged per image. Per-image
          means: ``object_dice_image_mean``, ``object_hausdorff_image_mean``. ``object_hausdorff``
          is ``inf`` if any image has objects on one side only.
        * ``pixel_dice``, ``pixel_iou``, ``ap50`` ... ``ap90``, ``mean_ap``, ``dsb_score``, ``aji``: mean over
          images (DSB2018 scores the mean of the per-image mean AP; MoNuSeg averages the per-image
          AJI).
        * ``n_pred``, ``n_gt``, ``tp``, ``fp``, ``fn``: sums; ``n_images``.

        Pooled conventions: no object anywhere -> F1 = precision = recall = 1.0 and Dice 1.0,
        Hausdorff 0.0; objects but TP = 0 -> F1 = 0.0.

    Raises
    ------
    InputImageError
        If ``per_image`` is empty or a dict lacks a key of :data:`EVALUATE_KEYS`.
    """
    rows = list(per_image)
    if not rows:
        raise InputImageError("aggregate() needs at least one per-image result")
    for k, r in enumerate(rows):
        missing = [key for key in EVALUATE_KEYS if key not in r]
        if missing:
            raise InputImageError(
                f"per-image result {k} lacks {', '.join(missing)}; pass the dicts returned by evaluate()"
            )

    def col(key: str) -> np.ndarray:
        return _column(rows, key)

    tp, fp, fn = (int(col(k).sum()) for k in ("tp", "fp", "fn"))
    n_pred, n_gt = int(col("n_pred").sum()), int(col("n_gt").sum())
    precision, recall, f1 = _pooled_detection(rows)
    dice = _pooled_dice(rows)
    if n_pred == 0 and n_gt == 0:
        hd = 0.0
    elif n_pred == 0 or n_gt == 0:
        hd = math.inf
    else:
        hd = 0.5 * (_pooled_term(col("area_pred"), col("object_hausdorff_pred_term"))
                    + _pooled_term(col("area_gt"), col("object_hausdorff_gt_term")))

    out: dict[str, float] = {
        "object_f1": f1,
        "precision": precision,
        "recall": recall,
        "object_dice": dice,
        "object_hausdorff": hd,
    }
    for key in ("pixel_dice", "pixel_iou", "ap50", "ap60", "ap70", "ap80", "ap90", "mean_ap", "dsb_score", "aji"):
        out[key] = float(col(key).mean())
    out.update(
        {
            "n_pred": n_pred,
            "n_gt": n_gt,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "n_images": len(rows),
            "object_f1_image_mean": float(col("object_f1").mean()),
            "precision_image_mean": float(col("precision").mean()),
            "recall_image_mean": float(col("recall").mean()),
            "object_dice_image_mean": float(col("object_dice").mean()),
            "object_hausdorff_image_mean": float(col("object_hausdorff").mean()),
        }
    )
    return out

"""Which objects are wrong: false-positive predictions and missed (false-negative) reference objects.

Two matching rules, the same as the metrics (:mod:`.metrics`):

* ``"glas"``: a predicted object S is a true positive when the reference object G with which it
  shares most pixels (ties: the smallest label) is covered by *more than half*, ``|S & G| > 0.5 |G|``
  (the GlaS object F1 rule, as :func:`.metrics.object_f1`);
* ``"iou"``: S and G match when their IoU is above 0.5 (AP@0.5, as :func:`.metrics.average_precision`).

Unmatched predictions are false positives (FP); reference objects no true positive matched are false
negatives (FN). :func:`error_map` paints them into one small label image for a viewer layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InstanceTunerError
from .metrics import intersection_matrix

RULES = ("glas", "iou")
#: Values of :func:`error_map`.
FALSE_POSITIVE, FALSE_NEGATIVE, BOTH = 1, 2, 3


@dataclass(frozen=True)
class ErrorIds:
    """Label values of the wrong objects of one image.

    Attributes
    ----------
    false_positives : np.ndarray
        int64 (k,) predicted labels that match no reference object, ascending.
    false_negatives : np.ndarray
        int64 (m,) reference labels that no prediction matched, ascending.
    """

    false_positives: np.ndarray
    false_negatives: np.ndarray


def _ids(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels[labels > 0]).astype(np.int64)


def error_ids(pred: ArrayLike, ref: ArrayLike, rule: str = "glas") -> ErrorIds:
    """False-positive predicted ids and false-negative reference ids of one 2D image.

    Parameters
    ----------
    pred, ref : array_like
        Integer label images (H, W) of the same shape; 0 is background.
    rule : {"glas", "iou"}
        Matching rule (see the module docstring).

    Returns
    -------
    ErrorIds

    Raises
    ------
    InstanceTunerError
        For an unknown rule; :class:`~..errors.InputImageError` for mismatched or non-label inputs.

    Examples
    --------
    >>> ref = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 0, 0, 7]])
    >>> ids = error_ids(pred, ref)
    >>> ids.false_positives.tolist(), ids.false_negatives.tolist()
    ([7], [2])
    """
    if rule not in RULES:
        raise InstanceTunerError(f"unknown matching rule {rule!r}; use one of {', '.join(RULES)}")
    pred, ref = np.asarray(pred), np.asarray(ref)
    inter = intersection_matrix(pred, ref).tocoo()  # rows: predicted objects in label order; columns: reference
    pred_ids, ref_ids = _ids(pred), _ids(ref)
    rows, cols, counts = inter.row, inter.col, inter.data
    ref_area = np.bincount(np.searchsorted(ref_ids, ref[ref > 0]), minlength=ref_ids.size)
    if rule == "glas":
        # each prediction's partner: the largest intersection, ties to the smallest reference label
        order = np.lexsort((cols, -counts, rows))
        first = np.ones(order.size, bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        best = order[first]
        hit = 2 * counts[best] > ref_area[cols[best]]
        tp_rows, tp_cols = rows[best][hit], cols[best][hit]
    else:
        pred_area = np.bincount(np.searchsorted(pred_ids, pred[pred > 0]), minlength=pred_ids.size)
        union = pred_area[rows] + ref_area[cols] - counts
        hit = counts > 0.5 * union
        tp_rows, tp_cols = rows[hit], cols[hit]
    fp = np.setdiff1d(np.arange(pred_ids.size), tp_rows)
    fn = np.setdiff1d(np.arange(ref_ids.size), tp_cols)
    return ErrorIds(pred_ids[fp], ref_ids[fn])


def error_map(pred: ArrayLike, ref: ArrayLike, rule: str = "glas") -> tuple[np.ndarray, list[ErrorIds]]:
    """Paint the false positives and false negatives of a prediction into one label image.

    Parameters
    ----------
    pred, ref : array_like
        Integer label images (H, W), or stacks (Z, H, W) matched slice by slice, of the same shape.
    rule : {"glas", "iou"}
        Matching rule (see the module docstring).

    Returns
    -------
    errors : np.ndarray
        uint8, the shape of ``pred``: :data:`FALSE_POSITIVE` (1) on false-positive predicted objects,
        :data:`FALSE_NEGATIVE` (2) on missed reference objects, :data:`BOTH` (3) where they overlap,
        0 elsewhere.
    ids : list of ErrorIds
        The wrong objects, one entry per slice (one entry for a 2D image).

    Examples
    --------
    >>> errors, _ = error_map(np.array([[5, 5, 0, 0, 7]]), np.array([[1, 1, 0, 2, 2]]))
    >>> errors.tolist()
    [[0, 0, 0, 2, 3]]
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InstanceTunerError(f"prediction of shape {pred.shape} and reference of shape {ref.shape} differ")
    if pred.ndim not in (2, 3):
        raise InstanceTunerError(f"expected label images (H, W) or stacks (Z, H, W), got shape {pred.shape}")
    stacked = pred.ndim == 3
    errors = np.zeros(pred.shape, np.uint8)
    found = []
    for i in range(pred.shape[0] if stacked else 1):
        p, r = (pred[i], ref[i]) if stacked else (pred, ref)
        ids = error_ids(p, r, rule)
        out = errors[i] if stacked else errors
        out[np.isin(p, ids.false_positives)] |= FALSE_POSITIVE
        out[np.isin(r, ids.false_negatives)] |= FALSE_NEGATIVE
        found.append(ids)
    return errors, found

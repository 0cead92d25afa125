"""Metrics of whole label layers (2D images or stacks) and the metrics auto-tuning can maximise.

Thin glue over :mod:`.metrics`: a stack (Z, H, W) is scored slice by slice and pooled with
:func:`.metrics.aggregate`; :data:`TUNABLE` names the per-image scores offered to
:func:`.autotune.autotune`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InstanceTunerError


def _metrics():
    """:mod:`.metrics`, imported on first use: listing the metric names (the command line's help) needs none."""
    from . import metrics  # deferred: scipy.spatial and scipy.optimize (0.14 s)

    return metrics


#: Metric key -> (display name, ``score(pred, ref) -> float``, higher is better).
TUNABLE: dict[str, tuple[str, Callable[[Any, Any], float]]] = {
    "object_f1": ("object F1", lambda p, r: _metrics().object_f1(p, r)["f1"]),
    "mean_ap": ("mean AP", lambda p, r: _metrics().average_precision(p, r)["mean_ap"]),
    "aji": ("AJI", lambda p, r: _metrics().aggregated_jaccard_index(p, r)),
    "object_dice": ("object Dice", lambda p, r: _metrics().object_dice(p, r)),
    "dsb_score": ("DSB score", lambda p, r: _metrics().dsb_score(p, r)),
}

#: (key of :func:`evaluate_labels`, display name) of the rows an evaluation table shows.
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("object_f1", "object F1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("object_dice", "object Dice"),
    ("object_hausdorff", "object Hausdorff (px)"),
    ("ap50", "AP@0.5"),
    ("ap60", "AP@0.6"),
    ("ap70", "AP@0.7"),
    ("ap80", "AP@0.8"),
    ("ap90", "AP@0.9"),
    ("mean_ap", "mean AP"),
    ("dsb_score", "DSB score (IoU 0.5-0.95)"),
    ("aji", "AJI"),
    ("n_pred", "predicted objects"),
    ("n_gt", "reference objects"),
    ("tp", "true positives"),
    ("fp", "false positives"),
    ("fn", "false negatives"),
)


def score_function(name: str) -> Callable[[Any, Any], float]:
    """The ``score(pred, ref)`` of a tunable metric (a key of :data:`TUNABLE`).

    Raises
    ------
    InstanceTunerError
        For an unknown name; the message lists the valid ones.
    """
    if name not in TUNABLE:
        raise InstanceTunerError(f"unknown metric {name!r}; choose one of {', '.join(TUNABLE)}")
    return TUNABLE[name][1]


def split_slices(reference: ArrayLike, shape: tuple[int, int], count: int | None) -> list[np.ndarray]:
    """A reference label layer as one 2D label image per slice of the segmented image.

    Parameters
    ----------
    reference : array_like
        Integer (H, W) labels, or (Z, H, W) for a stack.
    shape : tuple of int
        (H, W) of the segmented image's slices.
    count : int or None
        Number of slices of a stack; None for a 2D image.

    Raises
    ------
    InstanceTunerError
        If the reference does not have the segmented image's shape.
    """
    reference = np.asarray(reference)
    expected = tuple(shape) if count is None else (count, *shape)
    if reference.shape != expected:
        raise InstanceTunerError(
            f"the reference labels have shape {reference.shape}, but the segmented image's labels have shape {expected}"
        )
    return [reference] if count is None else list(reference)


def evaluate_labels(pred: ArrayLike, ref: ArrayLike) -> dict[str, float]:
    """All metrics of a predicted label layer against a reference one.

    Parameters
    ----------
    pred, ref : array_like
        Integer label images (H, W), or stacks (Z, H, W) of the same shape.

    Returns
    -------
    dict[str, float]
        For a 2D image :func:`.metrics.evaluate`; for a stack :func:`.metrics.aggregate` of the slices
        (object F1 and Dice pooled the GlaS way, the other scores averaged). Both hold every key of
        :data:`TABLE_ROWS`.

    Raises
    ------
    InstanceTunerError
        On shapes that differ or are neither 2D nor 3D.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InstanceTunerError(f"prediction of shape {pred.shape} and reference of shape {ref.shape} differ")
    metrics = _metrics()
    if pred.ndim == 2:
        return metrics.evaluate(pred, ref)
    if pred.ndim == 3:
        return metrics.aggregate([metrics.evaluate(p, r) for p, r in zip(pred, ref)])
    raise InstanceTunerError(f"expected label images (H, W) or stacks (Z, H, W), got shape {pred.shape}")

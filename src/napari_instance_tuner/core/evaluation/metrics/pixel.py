"""Pixel-level (semantic) metrics of the binarised masks: :func:`pixel_dice` and :func:`pixel_iou`."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._instances import _Instances, _parse_pair

# --------------------------------------------------------------------------------------------
# Pixel-level Dice / IoU
# --------------------------------------------------------------------------------------------


def _pixel_from_instances(p: _Instances, g: _Instances) -> tuple[float, float]:
    fp, fg = p.foreground(), g.foreground()
    inter = int(np.count_nonzero(fp & fg))
    sp, sg = int(np.count_nonzero(fp)), int(np.count_nonzero(fg))
    if sp + sg == 0:
        return 1.0, 1.0
    return 2.0 * inter / (sp + sg), inter / (sp + sg - inter)


def pixel_dice(pred: ArrayLike, gt: ArrayLike) -> float:
    """Dice coefficient of the binarised masks: ``2 |P AND G| / (|P| + |G|)``.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W), binary mask bool (H, W) or instance stack bool (N, H, W); the
        mask is the union of all objects.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty (convention: nothing to find, nothing found).
    """
    p, g = _parse_pair(pred, gt, allow_binary=True)
    return _pixel_from_instances(p, g)[0]


def pixel_iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Intersection over union (Jaccard) of the binarised masks: ``|P AND G| / |P OR G|``.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W), binary mask bool (H, W) or instance stack bool (N, H, W).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty.
    """
    p, g = _parse_pair(pred, gt, allow_binary=True)
    return _pixel_from_instances(p, g)[1]

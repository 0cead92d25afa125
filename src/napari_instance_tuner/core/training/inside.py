"""Which objects lie mostly inside a region: what fine-tuning validates on, and what training keeps of a
partly checked image (:func:`mostly_inside`)."""

from __future__ import annotations

import numpy as np

from ..sparse_masks import SparseMasks

#: An object (reference or predicted) is scored when at least this fraction of its pixels is held out.
MOSTLY_INSIDE = 0.5


def mostly_inside(labels: np.ndarray, mask: np.ndarray, fraction: float = MOSTLY_INSIDE) -> np.ndarray:
    """Keep the objects of a label image or mask stack with at least ``fraction`` of their pixels in ``mask``.

    Parameters
    ----------
    labels : np.ndarray or SparseMasks
        Integer (H, W) labels (0 = background), bool (N, H, W) per-object masks, or boxes and crops.
    mask : np.ndarray
        bool (H, W).
    fraction : float

    Returns
    -------
    np.ndarray or SparseMasks
        The same kind: other objects set to 0, or their masks dropped. Kept objects stay whole
        (also their pixels outside ``mask``), so their shapes are scored fairly.

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 2]]); mask = np.array([[True, True, True, False]])
    >>> mostly_inside(labels, mask).tolist()
    [[1, 1, 2, 2]]
    >>> mostly_inside(labels, mask, 0.6).tolist()
    [[1, 1, 0, 0]]
    """
    mask = np.asarray(mask, bool)
    if isinstance(labels, SparseMasks):
        obj, pix = labels.coords()
        inside = np.bincount(obj, weights=mask.ravel()[pix], minlength=len(labels))
        return labels.select(inside >= fraction * np.maximum(labels.areas(), 1))
    if labels.ndim == 3:
        masks = np.asarray(labels, bool).reshape(len(labels), mask.size)
        inside = (masks & mask.ravel()).sum(1)
        return labels[inside >= fraction * np.maximum(masks.sum(1), 1)]
    ids, inverse, area = np.unique(labels, return_inverse=True, return_counts=True)
    inside = np.bincount(inverse.ravel(), weights=mask.ravel(), minlength=len(ids))
    keep = (inside >= fraction * area) & (ids != 0)
    return np.where(keep[inverse.reshape(labels.shape)], labels, 0)

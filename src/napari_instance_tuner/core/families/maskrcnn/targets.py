"""Targets of the Mask R-CNN family: torchvision's detection target dicts (boxes, labels, masks).

torchvision's :class:`~torchvision.models.detection.MaskRCNN` turns these targets into its own training
targets (anchor matching, proposal sampling, mask crops) inside its forward pass; this module only makes
the per-image dicts from label images or mask stacks, and carries a batch of them to the device.
"""

from __future__ import annotations

import numpy as np


class TargetBatch:
    """torchvision detection targets of a batch, movable like a tensor (``fit`` calls ``y.to(device)``).

    Attributes
    ----------
    dicts : list of dict
        Per image ``boxes`` float32 (N, 4), ``labels`` int64 (N,), ``masks`` uint8 (N, c, c).
    """

    def __init__(self, dicts: list[dict]) -> None:
        self.dicts = dicts

    def to(self, device) -> TargetBatch:
        return TargetBatch([{k: v.to(device) for k, v in d.items()} for d in self.dicts])


def targets_from_instances(instances: np.ndarray, min_pixels: int = 4) -> dict[str, np.ndarray]:
    """Boxes, class labels and masks of the objects in a crop.

    Parameters
    ----------
    instances : np.ndarray
        int (c, c) labels or bool (c, c, N) masks.
    min_pixels : int
        Objects with fewer pixels (e.g. cut by the crop) are dropped.

    Returns
    -------
    dict
        ``boxes`` float32 (N, 4) x1, y1, x2, y2 (exclusive edges); ``labels`` int64 (N,) all 1;
        ``masks`` uint8 (N, c, c).
    """
    if instances.ndim == 2:
        ids = np.unique(instances)
        ids = ids[ids > 0]
        masks = instances[None] == ids[:, None, None] if ids.size else np.zeros((0, *instances.shape), bool)
    else:
        masks = np.moveaxis(instances, -1, 0).astype(bool)
    masks = masks[masks.reshape(len(masks), -1).sum(1) >= min_pixels] if len(masks) else masks
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return {"boxes": boxes, "labels": np.ones(len(masks), np.int64), "masks": masks.astype(np.uint8)}

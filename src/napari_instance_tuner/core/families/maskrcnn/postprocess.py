"""Live post-processing of cached Mask R-CNN detections: score threshold, NMS, mask threshold, S_min, overlaps.

:meth:`.family.MaskRCNNFamily.predict_maps` runs the network once with permissive internal thresholds
(score >= 0.05, class-wise NMS at IoU 0.9) and caches every detection's box, score, class and its mask
probabilities *at the mask head's resolution* (28 x 28, float16) in :attr:`Maps.extra`. Every slider move
then runs only :func:`postprocess`: threshold the scores, run NMS at the chosen IoU (over touching boxes
only, :mod:`.sparse_nms`), paste the kept 28 x 28 masks into their boxes (bilinear resize restricted to the
box, torchvision's convention of a one-cell border and box expansion; once per detection, :mod:`.pasted`
keeps them), threshold them, drop objects under S_min pixels. Objects stay in their boxes (boxes and crops,
:class:`~...sparse_masks.SparseMasks`): no full-image array per object. Raising the score
threshold or lowering the NMS IoU can only remove detections, so no setting needs the network again.

Deliberate difference from torchvision / the DSB report: the report tuned NMS, RoI counts and anchors by
retraining or re-running the model; here score and NMS thresholds are live post-processing parameters
(NMS above 0.9 cannot bring back what the network's permissive NMS removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...family import Instances, Maps
from ...params import param
from ...sparse_masks import SparseMasks
from .pasted import pasted_masks
from .sparse_nms import sparse_nms

#: Keys of :attr:`Maps.extra` written by the family and read here.
EXTRA_KEYS = ("boxes", "scores", "classes", "mask_probs")


@dataclass(frozen=True)
class MaskRCNNParams:
    """Post-processing parameters (sizes in pixels of the image)."""

    score_threshold: float = param(0.5, 0.05, 1.0, "keep detections whose class score is at least this", 0.01)
    nms_iou: float = param(0.6, 0.1, 0.9, "NMS: drop a box overlapping a better one by more than this IoU", 0.01)
    mask_threshold: float = param(0.5, 0.05, 0.95, "mask probability above which a pixel belongs to its object", 0.01)
    min_size: int = param(10, 0, 1000, "S_min: drop objects smaller than this many pixels", 5)
    allow_overlaps: bool = param(False, description="keep overlapping masks (else the higher score wins each pixel)")


def paste_mask(prob: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """Resize one box-relative mask into its box, clipped to the image.

    Parameters
    ----------
    prob : np.ndarray
        float32 (M, M) probabilities of the object inside ``box`` (the mask head's output).
    box : np.ndarray
        (4,) x1, y1, x2, y2 in image pixels.
    shape : tuple of int
        (H, W) of the image.

    Returns
    -------
    y0, x0 : int
        Top-left corner of the patch in the image.
    patch : np.ndarray
        float32 (h, w) probabilities; h or w is 0 when the box lies outside the image.

    Notes
    -----
    As torchvision's ``paste_masks_in_image``: the mask gets a one-cell zero border and the box is
    enlarged by (M + 2) / M about its centre, so the mask's edge cells interpolate towards 0 at the box
    edge; the enlarged box is truncated to whole pixels and the mask resized bilinearly to it.
    """
    m = prob.shape[-1]
    padded = np.zeros((m + 2, m + 2), np.float32)
    padded[1:-1, 1:-1] = prob
    scale = (m + 2) / m
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    hw, hh = 0.5 * (box[2] - box[0]) * scale, 0.5 * (box[3] - box[1]) * scale
    bx0, by0, bx1, by1 = int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)
    w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
    x0, y0 = max(bx0, 0), max(by0, 0)
    x1, y1 = min(bx0 + w, shape[1]), min(by0 + h, shape[0])
    if x1 <= x0 or y1 <= y0:
        return y0, x0, np.zeros((0, 0), np.float32)
    resized = cv2.resize(padded, (w, h), interpolation=cv2.INTER_LINEAR)
    return y0, x0, resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]


def score_map(extra: dict, shape: tuple[int, int], min_score: float = 0.05) -> np.ndarray:
    """Display map: per pixel, the largest (mask probability x score) over the cached detections.

    Returns
    -------
    np.ndarray
        float32 (H, W) in [0, 1].
    """
    out = np.zeros(shape, np.float32)
    for box, score, prob in zip(extra["boxes"], extra["scores"], extra["mask_probs"]):
        if score < min_score:
            continue
        y0, x0, patch = paste_mask(prob.astype(np.float32), box, shape)
        region = out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
        np.maximum(region, patch * float(score), out=region)
    return out


def select(extra: dict, score_threshold: float, nms_iou: float) -> np.ndarray:
    """Indices of the detections kept by the score threshold and class-wise NMS, best score first."""
    import torch  # deferred: torch
    from torchvision.ops import batched_nms  # deferred: torchvision

    scores = np.asarray(extra["scores"], np.float32)
    candidates = np.flatnonzero(scores >= score_threshold)
    if candidates.size == 0:
        return candidates
    boxes = np.ascontiguousarray(extra["boxes"][candidates], np.float32)
    picked = scores[candidates]
    classes = np.asarray(extra["classes"])[candidates]
    found = None
    if boxes.size > 4000 and (classes == classes[0]).all():
        # One class (nuclei), many boxes: batched_nms's CPU path here is NMS, the kept indices in index order,
        # then torch's sort by decreasing score (ties in its order). NMS runs over the touching pairs only
        # (.sparse_nms), in numpy, in the order of torchvision's kernel (a stable descending sort).
        found = sparse_nms(boxes, np.argsort(-picked, kind="stable"), float(nms_iou))
    if found is not None:
        kept = np.sort(found)
        keep = kept[torch.from_numpy(picked[kept]).sort(descending=True)[1].numpy()]
    else:
        keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(picked), torch.from_numpy(classes.astype(np.int64)),
                           float(nms_iou)).numpy()
    return candidates[keep]  # indices sorted by decreasing score


def postprocess(maps: Maps, params: MaskRCNNParams) -> Instances:
    """Cached detections -> instances (see the module docstring for the steps).

    Parameters
    ----------
    maps : Maps
        ``extra`` holds ``boxes`` float32 (K, 4) x1, y1, x2, y2 in image pixels, ``scores`` float32 (K,),
        ``classes`` int32 (K,) and ``mask_probs`` float16 (K, M, M); ``arrays`` fixes the image shape.
    params : MaskRCNNParams

    Returns
    -------
    Instances
        ``labels`` uint32 (H, W), objects numbered 1..N by decreasing score; where masks overlap the
        higher score wins the pixel. ``scores`` float32 (N,). With ``allow_overlaps``, ``objects`` holds the
        full masks, each cropped to its pasted box (object i + 1 of ``labels`` is ``objects.crop(i)``; no
        full-image array per object); otherwise None and each object is what it won of its mask. S_min applies to the full mask with overlaps, else to
        the part the object won.
    """
    shape = tuple(maps.shape)
    extra = maps.extra
    order = select(extra, params.score_threshold, params.nms_iou)
    paste = pasted_masks(extra, lambda i: paste_mask(extra["mask_probs"][i].astype(np.float32), extra["boxes"][i], shape))
    boxes, offsets, probs = paste.gather(order)
    above = probs >= params.mask_threshold
    sizes = np.diff(offsets)
    counted = np.zeros(above.size + 1, np.int64)
    np.cumsum(above, out=counted[1:])
    areas = counted[offsets[1:]] - counted[offsets[:-1]]
    if params.allow_overlaps:  # each mask stays in its box; the best (first) wins overlapping label pixels
        keep = (sizes > 0) & (areas >= max(params.min_size, 1))
        kept_offsets = np.zeros(np.count_nonzero(keep) + 1, np.int64)
        np.cumsum(sizes[keep], out=kept_offsets[1:])
        objects = SparseMasks(shape, boxes[keep], above[np.repeat(keep, sizes)], kept_offsets)
        scores = np.asarray(extra["scores"], np.float32)[order[keep]]
        return Instances(labels=objects.to_labels(winner="first"), objects=objects, scores=scores.astype(np.float32))
    labels = np.zeros(shape, np.uint32)
    kept, number = [], 0
    for k in np.flatnonzero(sizes > 0).tolist():  # best first: each object takes only the pixels still free
        y0, x0, y1, x1 = boxes[k].tolist()
        region = labels[y0:y1, x0:x1]
        won = above[offsets[k] : offsets[k + 1]].reshape(y1 - y0, x1 - x0) & (region == 0)
        if np.count_nonzero(won) >= max(params.min_size, 1):
            number += 1
            region[won] = number
            kept.append(order[k])
    scores = np.asarray(extra["scores"], np.float32)[kept]
    return Instances(labels=labels, objects=None, scores=scores.astype(np.float32))

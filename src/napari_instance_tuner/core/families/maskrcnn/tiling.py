"""Tiled detection for images larger than a tile: one object on a seam stays one, uncut object.

The detector runs on overlapping tiles; boxes are shifted to image coordinates. Which tile reports an
object:

1. every tile has a *core*: the tiles' rectangles cut at the middle of each overlap, so the cores
   partition the image;
2. a detection that does not touch an inner edge of its tile (an edge with a neighbouring tile; within
   ``margin`` pixels) is kept by the tile whose core holds its box centre, or by its own tile when that
   owner sees the box touching one of *its* inner edges (the object was cut there);
3. a detection that touches an inner edge of its tile (probably a cut object) is dropped when another
   tile holds its box clear of that tile's inner edges: that tile saw the object whole. An object wider
   than the overlap is cut in every tile; then all its pieces are kept for step 4;
4. safety net for the cases the rules above cannot settle (objects larger than the overlap, detections
   whose boxes differ slightly between tiles): going down the scores, a detection near a seam (not
   settled by rule 2 in its own core) is dropped when a better one from another tile overlaps it by box
   IoU > ``dedup_iou`` or holds more than ``containment`` of the smaller box's area.

The rules use boxes only, so they are cheap and independent of the mask threshold chosen later.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ...inference.predict import _starts
from ...progress import CancelToken, Progress


@dataclass
class Detections:
    """Detections of one image or tile.

    Attributes
    ----------
    boxes : np.ndarray
        float32 (K, 4): x1, y1, x2, y2 in pixels (x2, y2 exclusive edges).
    scores : np.ndarray
        float32 (K,).
    classes : np.ndarray
        int32 (K,) class index (1 = the first object class).
    mask_probs : np.ndarray
        float16 (K, M, M) mask probabilities inside each box.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    mask_probs: np.ndarray

    @classmethod
    def empty(cls, m: int = 28) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                   np.zeros((0, m, m), np.float16))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> Detections:
        """The detections at ``index`` (int array or bool mask)."""
        return Detections(self.boxes[index], self.scores[index], self.classes[index], self.mask_probs[index])

    def shifted(self, dy: float, dx: float) -> Detections:
        """Boxes moved by (dy, dx) pixels."""
        return Detections(self.boxes + np.array([dx, dy, dx, dy], np.float32), self.scores, self.classes,
                          self.mask_probs)

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        """All detections of ``parts`` in order."""
        if not parts:
            return Detections.empty()
        return Detections(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("boxes", "scores", "classes", "mask_probs")))

    def to_extra(self) -> dict:
        """As :attr:`~napari_instance_tuner.core.family.Maps.extra` (see :mod:`.postprocess`)."""
        return {"boxes": self.boxes.astype(np.float32), "scores": self.scores.astype(np.float32),
                "classes": self.classes.astype(np.int32), "mask_probs": self.mask_probs.astype(np.float16)}


def _cuts(starts: list[int], size: int, length: int) -> np.ndarray:
    """Core boundaries along one axis: 0, the middles of the overlaps, ``length``."""
    mids = [0.5 * (starts[i] + starts[i - 1] + size) for i in range(1, len(starts))]
    return np.array([0.0, *mids, float(length)])


def tile_grid(shape: tuple[int, int], tile_size: int, overlap: int) -> tuple[list[int], list[int], int, int]:
    """Tile starts along y and x and the tile height and width for an image of ``shape``."""
    th, tw = min(tile_size, shape[0]), min(tile_size, shape[1])
    overlap = min(overlap, tile_size // 2)
    return _starts(shape[0], th, max(1, th - overlap)), _starts(shape[1], tw, max(1, tw - overlap)), th, tw


def _clear(boxes: np.ndarray, rect: tuple[int, int, int, int], shape: tuple[int, int], margin: float) -> np.ndarray:
    """bool (K,): the boxes lie in ``rect`` (y0, x0, y1, x1) at least ``margin`` from its inner edges."""
    y0, x0, y1, x1 = rect
    ok = np.ones(len(boxes), bool)
    ok &= boxes[:, 0] >= (x0 + margin if x0 > 0 else -np.inf)
    ok &= boxes[:, 1] >= (y0 + margin if y0 > 0 else -np.inf)
    ok &= boxes[:, 2] <= (x1 - margin if x1 < shape[1] else np.inf)
    ok &= boxes[:, 3] <= (y1 - margin if y1 < shape[0] else np.inf)
    return ok


def _overlaps(box: np.ndarray, others: np.ndarray, dedup_iou: float, containment: float) -> np.ndarray:
    """bool: ``box`` and each of ``others`` overlap by IoU > dedup_iou or containment of the smaller."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    iou = inter / np.maximum(a + b - inter, 1e-6)
    contained = inter / np.maximum(np.minimum(a, b), 1e-6)
    return (iou > dedup_iou) | (contained > containment)


def merge_tiles(
    parts: list[tuple[tuple[int, int, int, int], Detections]],
    shape: tuple[int, int],
    *,
    margin: float = 2.0,
    dedup_iou: float = 0.5,
    containment: float = 0.8,
) -> Detections:
    """Merge per-tile detections (already in image coordinates) by the rules of the module docstring.

    Parameters
    ----------
    parts : list of ((y0, x0, y1, x1), Detections)
        Each tile's rectangle and its detections in image pixels; tiles as from :func:`tile_grid`.
    shape : tuple of int
        (H, W) of the image.

    Returns
    -------
    Detections
        Sorted by decreasing score.
    """
    rects = [r for r, _ in parts]
    ys = sorted({r[0] for r in rects})
    xs = sorted({r[1] for r in rects})
    th, tw = rects[0][2] - rects[0][0], rects[0][3] - rects[0][1]
    cut_y, cut_x = _cuts(ys, th, shape[0]), _cuts(xs, tw, shape[1])
    index = {r: k for k, r in enumerate(rects)}
    kept, settled, tiles = [], [], []
    for k, (rect, det) in enumerate(parts):
        if not len(det):
            continue
        boxes = det.boxes
        clear_here = _clear(boxes, rect, shape, margin)
        cy, cx = 0.5 * (boxes[:, 1] + boxes[:, 3]), 0.5 * (boxes[:, 0] + boxes[:, 2])
        iy = np.clip(np.searchsorted(cut_y, cy, side="right") - 1, 0, len(ys) - 1)
        ix = np.clip(np.searchsorted(cut_x, cx, side="right") - 1, 0, len(xs) - 1)
        owner = np.array([index[(ys[a], xs[b], ys[a] + th, xs[b] + tw)] for a, b in zip(iy, ix)])
        clear_elsewhere = np.zeros(len(det), bool)
        clear_in_owner = np.zeros(len(det), bool)
        for j, other in enumerate(rects):
            c = _clear(boxes, other, shape, margin)
            clear_in_owner |= c & (owner == j)
            if j != k:
                clear_elsewhere |= c
        keep = np.where(clear_here, (owner == k) | ~clear_in_owner, ~clear_elsewhere)
        kept.append(det.take(keep))
        settled.append((clear_here & (owner == k))[keep])
        tiles.append(np.full(int(keep.sum()), k))
    if not kept:
        return Detections.empty()
    merged, settled, tiles = Detections.concat(kept), np.concatenate(settled), np.concatenate(tiles)
    order = np.argsort(-merged.scores, kind="stable")
    accepted: list[int] = []
    for i in order:
        if accepted:
            acc = np.array(accepted)
            other_tile = tiles[acc] != tiles[i]
            # certain detections are compared only with unsettled ones; unsettled ones with all
            relevant = other_tile if not settled[i] else other_tile & ~settled[acc]
            if relevant.any() and _overlaps(merged.boxes[i], merged.boxes[acc[relevant]], dedup_iou, containment).any():
                continue
        accepted.append(int(i))
    return merged.take(np.array(accepted, dtype=np.intp))


def detect_tiled(
    detect: Callable[[np.ndarray], Detections],
    image: np.ndarray,
    *,
    tile_size: int = 512,
    overlap: int = 64,
    margin: float = 2.0,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Detections]:
    """Run ``detect`` on overlapping tiles of ``image``; yields progress per tile; returns merged detections.

    Parameters
    ----------
    detect : callable
        ``detect(tile) -> Detections`` in the tile's pixel coordinates; ``tile`` is float32 (h, w, C).
    image : np.ndarray
        float32 (H, W, C) at network scale.
    tile_size : int
        Tile edge; an image no larger runs in one pass.
    overlap : int
        Overlap of neighbouring tiles; objects up to about this size on a seam are seen whole by one tile.
    margin : float
        A box within this many pixels of an inner tile edge touches it.
    cancel : CancelToken, optional
        Checked before every tile.

    Returns
    -------
    Detections
        In image coordinates, sorted by decreasing score.
    """
    shape = image.shape[:2]
    ys, xs, th, tw = tile_grid(shape, tile_size, overlap)
    parts = []
    total = len(ys) * len(xs)
    for y in ys:
        for x in xs:
            if cancel is not None:
                cancel.check()
            det = detect(np.ascontiguousarray(image[y : y + th, x : x + tw]))
            parts.append(((y, x, y + th, x + tw), det.shifted(y, x)))
            yield Progress(len(parts), total, f"tile {len(parts)}/{total}")
    if total == 1:
        det = parts[0][1]
        return det.take(np.argsort(-det.scores, kind="stable"))
    return merge_tiles(parts, shape, margin=margin)

"""Every cached detection's mask pasted into its box once, kept in one flat buffer for vectorised thresholds.

A detection's pasted probabilities (:func:`.postprocess.paste_mask`) depend on the detection only, never on
the post-processing parameters. :class:`PastedMasks` pastes each detection the first time a slider setting
keeps it and appends the patch to one flat float32 buffer, so that every later change thresholds all kept
masks in a few numpy calls (no per-object Python). Memory: the boxes' area in float32 (a few MB for
thousands of nuclei), never a full-image canvas per object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Key of :attr:`Maps.extra` that holds the :class:`PastedMasks` of a map set.
KEY = "pasted"


class PastedMasks:
    """Pasted mask probabilities of the detections of one image.

    Parameters
    ----------
    paste : callable
        ``paste(index) -> (y0, x0, float32 (h, w) patch)``: the detection's probabilities in its box, clipped
        to the image (h or w may be 0).
    count : int
        Number of detections.
    """

    def __init__(self, paste: Callable[[int], tuple[int, int, np.ndarray]], count: int) -> None:
        self._paste = paste
        self.boxes = np.zeros((count, 4), np.int64)  # y0, x0, y1, x1 of each pasted detection
        self.start = np.full(count, -1, np.int64)  # where each pasted detection's patch starts in ``flat``
        self.flat = np.zeros(0, np.float32)

    def _ensure(self, indices: np.ndarray) -> None:
        missing = indices[self.start[indices] < 0]
        if missing.size == 0:
            return
        patches, at = [], self.flat.size
        for i in missing.tolist():
            y0, x0, patch = self._paste(i)
            self.boxes[i] = (y0, x0, y0 + patch.shape[0], x0 + patch.shape[1])
            self.start[i] = at
            at += patch.size
            patches.append(patch.ravel())
        self.flat = np.concatenate([self.flat, *patches])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes int64 (K, 4) y0, x0, y1, x1; offsets int64 (K + 1,); float32 probabilities, the K patches
        one after another, row-major) of the detections ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        self._ensure(indices)
        boxes = self.boxes[indices]
        sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        offsets = np.zeros(indices.size + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        pixel = np.arange(offsets[-1], dtype=np.int64) + np.repeat(self.start[indices] - offsets[:-1], sizes)
        return boxes, offsets, self.flat[pixel]


def pasted_masks(extra: dict, paste: Callable[[int], tuple[int, int, np.ndarray]]) -> PastedMasks:
    """The :class:`PastedMasks` of the detections in ``extra`` (made on first use and kept there)."""
    found = extra.get(KEY)
    if found is None:
        found = extra[KEY] = PastedMasks(paste, len(extra["scores"]))
    return found

"""Tiled detection: an object on a tile seam is reported once and uncut (a fake detector stands in for the network)."""

import cv2
import numpy as np
import pytest

from napari_instance_tuner.core.errors import Cancelled
from napari_instance_tuner.core.evaluation.metrics import average_precision
from napari_instance_tuner.core.families.maskrcnn.postprocess import MaskRCNNParams, postprocess
from napari_instance_tuner.core.families.maskrcnn.tiling import Detections, detect_tiled, merge_tiles, tile_grid
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.progress import CancelToken, run


def label_detector(calls: list):
    """A perfect detector of the objects visible in a tile whose first channel holds label values."""

    def detect(tile: np.ndarray) -> Detections:
        calls.append(tile.shape)
        labels = tile[..., 0].astype(np.int32)
        boxes, probs = [], []
        for v in np.unique(labels[labels > 0]):
            m = labels == v
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            boxes.append([x0, y0, x1, y1])
            crop = m[y0:y1, x0:x1].astype(np.float32)
            probs.append(cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR))
        n = len(boxes)
        return Detections(np.array(boxes, np.float32).reshape(n, 4), np.linspace(0.9, 0.8, n).astype(np.float32),
                          np.ones(n, np.int32), np.array(probs, np.float16).reshape(n, 28, 28))

    return detect


def segment(labels: np.ndarray, tile_size: int, overlap: int, calls: list | None = None):
    image = np.repeat(labels[..., None].astype(np.float32), 3, -1)
    det = run(detect_tiled(label_detector(calls if calls is not None else []), image, tile_size=tile_size,
                           overlap=overlap))
    maps = Maps({"score_map": np.zeros(labels.shape, np.float32)}, det.to_extra())
    return postprocess(maps, MaskRCNNParams(min_size=0))


def test_nuclei_on_seams_are_found_once_and_whole(disks_labels):
    # 128 x 128 in 64-pixel tiles with 24 overlap: tiles start at 0, 40, 64 -> seams around x, y = 40..64
    centres = ((52, 20), (20, 52), (52, 52), (100, 60), (60, 100), (12, 12), (110, 110), (44, 44))
    gt = disks_labels((128, 128), centres, radius=7)
    ys, xs, th, tw = tile_grid(gt.shape, 64, 24)
    assert (ys, xs, th, tw) == ([0, 40, 64], [0, 40, 64], 64, 64)
    calls = []
    inst = segment(gt, 64, 24, calls)
    assert len(calls) == 9
    assert inst.count == len(centres)  # no duplicates, nothing lost
    ap = average_precision(inst.labels, gt, thresholds=(0.8,))
    assert ap["ap80"] == 1.0  # every nucleus matched one-to-one with IoU > 0.8: none is cut


def test_tiling_matches_a_single_pass(disks_labels):
    gt = disks_labels((96, 96), ((10, 48), (47, 47), (48, 30), (80, 70), (30, 80)), radius=6)
    whole = segment(gt, 512, 0)
    tiled = segment(gt, 48, 20)
    assert whole.count == tiled.count == 5
    assert average_precision(tiled.labels, whole.labels, thresholds=(0.9,))["ap90"] == 1.0


def test_object_inside_the_overlap_is_kept_by_one_tile_and_cut_copies_are_dropped():
    shape = (100, 160)  # two tiles along x: [0, 100) and [60, 160)
    parts = []
    whole_a = Detections(np.array([[68, 40, 88, 60]], np.float32), np.array([0.7], np.float32),
                         np.ones(1, np.int32), np.ones((1, 28, 28), np.float16))
    whole_b = Detections(np.array([[68, 40, 88, 60]], np.float32), np.array([0.9], np.float32),
                         np.ones(1, np.int32), np.ones((1, 28, 28), np.float16))
    cut_a = Detections(np.array([[92, 10, 100, 30]], np.float32), np.array([0.95], np.float32),
                       np.ones(1, np.int32), np.ones((1, 28, 28), np.float16))  # touches tile A's inner edge
    whole_c = Detections(np.array([[92, 10, 110, 30]], np.float32), np.array([0.6], np.float32),
                         np.ones(1, np.int32), np.ones((1, 28, 28), np.float16))
    parts.append(((0, 0, 100, 100), Detections.concat([whole_a, cut_a])))
    parts.append(((0, 60, 100, 160), Detections.concat([whole_b, whole_c])))
    merged = merge_tiles(parts, shape)
    assert len(merged) == 2
    # the object centred at x = 78 lies in tile A's core (cores meet at x = 80); the seam object comes from B
    np.testing.assert_allclose(merged.scores, [0.7, 0.6])
    np.testing.assert_allclose(merged.boxes[1], [92, 10, 110, 30])


def test_cancel_between_tiles():
    token = CancelToken()
    gen = detect_tiled(label_detector([]), np.zeros((128, 128, 3), np.float32), tile_size=64, overlap=16, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        run(gen)

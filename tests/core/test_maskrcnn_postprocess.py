"""Live post-processing of cached Mask R-CNN detections: contracts, overlaps, S_min, no network calls."""

from dataclasses import replace

import numpy as np
import pytest

from napari_instance_tuner.core.families.maskrcnn.postprocess import MaskRCNNParams, paste_mask, postprocess, score_map
from napari_instance_tuner.core.families.maskrcnn.tiling import Detections
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.params import param_specs, params_from_dict


def disk_detection(cy, cx, r, score, m=28):
    """A detection whose 28 x 28 mask is a disk filling its box (box edges exclusive)."""
    box = np.array([cx - r, cy - r, cx + r, cy + r], np.float32)
    g = (np.arange(m) + 0.5) / (m / 2) - 1
    prob = (g[:, None] ** 2 + g[None, :] ** 2 <= 1.0).astype(np.float16)
    return box, score, prob


def make_maps(dets, shape=(64, 64)) -> Maps:
    boxes, scores, probs = zip(*dets) if dets else ((), (), ())
    det = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                     np.ones(len(dets), np.int32), np.array(probs, np.float16).reshape(-1, 28, 28))
    return Maps({"score_map": np.zeros(shape, np.float32)}, det.to_extra())


def test_contracts_and_order():
    maps = make_maps([disk_detection(15, 15, 8, 0.7), disk_detection(45, 45, 10, 0.9)])
    inst = postprocess(maps, MaskRCNNParams())
    assert inst.labels.dtype == np.uint32 and inst.labels.shape == (64, 64)
    assert inst.masks is None and inst.scores.dtype == np.float32
    np.testing.assert_allclose(inst.scores, [0.9, 0.7], rtol=1e-6)  # best first: object 1 is the 0.9 one
    assert inst.labels[45, 45] == 1 and inst.labels[15, 15] == 2
    # the pasted disk covers about pi r^2 pixels
    assert abs(np.count_nonzero(inst.labels == 1) - np.pi * 100) < 0.12 * np.pi * 100
    with_masks = postprocess(maps, replace(MaskRCNNParams(), allow_overlaps=True))
    assert with_masks.masks.dtype == bool and with_masks.masks.shape == (2, 64, 64)
    np.testing.assert_array_equal(with_masks.labels, inst.labels)  # disjoint objects: the same labels


def test_overlaps_kept_only_when_allowed():
    # two disks whose boxes overlap by IoU ~0.2 (< NMS 0.6) and whose masks share pixels
    maps = make_maps([disk_detection(30, 24, 10, 0.6), disk_detection(30, 38, 10, 0.8)])
    kept = postprocess(maps, replace(MaskRCNNParams(), allow_overlaps=True))
    shared = kept.masks[0] & kept.masks[1]
    assert kept.count == 2 and shared.sum() > 20
    assert np.all(kept.labels[shared] == 1)  # the higher score (object 1) wins the flattened labels
    flat = postprocess(maps, MaskRCNNParams())
    assert flat.masks is None and flat.count == 2
    assert np.all(flat.labels[shared] == 1)
    assert np.count_nonzero(flat.labels == 2) == kept.masks[1].sum() - shared.sum()


def test_min_size_drops_small_objects():
    maps = make_maps([disk_detection(15, 15, 3, 0.9), disk_detection(45, 45, 10, 0.9)])
    assert postprocess(maps, replace(MaskRCNNParams(), min_size=0)).count == 2
    inst = postprocess(maps, replace(MaskRCNNParams(), min_size=50))  # the small disk has ~28 px
    assert inst.count == 1 and inst.labels[45, 45] == 1 and inst.labels[15, 15] == 0
    assert postprocess(maps, replace(MaskRCNNParams(), min_size=50, allow_overlaps=True)).count == 1
    # S_min counts what an object won when overlaps are flattened
    hidden = make_maps([disk_detection(30, 30, 10, 0.9), disk_detection(30, 33, 7, 0.8)])
    assert postprocess(hidden, replace(MaskRCNNParams(), nms_iou=0.9, min_size=5)).count == 1
    assert postprocess(hidden, replace(MaskRCNNParams(), nms_iou=0.9, min_size=5, allow_overlaps=True)).count == 2


def test_score_nms_and_mask_thresholds():
    a, b = disk_detection(30, 28, 10, 0.9), disk_detection(30, 32, 10, 0.6)  # box IoU 16*20/(2*400-320) = 0.67
    maps = make_maps([a, b])
    base = MaskRCNNParams()
    assert postprocess(maps, replace(base, nms_iou=0.6)).count == 1
    assert postprocess(maps, replace(base, nms_iou=0.7, allow_overlaps=True)).count == 2
    assert postprocess(maps, replace(base, score_threshold=0.7, nms_iou=0.7, allow_overlaps=True)).count == 1
    # a soft mask: a higher mask threshold gives a smaller object
    soft = make_maps([(np.array([10, 10, 50, 50], np.float32), 0.9,
                       np.clip(1.2 - np.hypot(*np.mgrid[-1:1:28j, -1:1:28j]), 0, 1).astype(np.float16))])
    low = np.count_nonzero(postprocess(soft, replace(base, mask_threshold=0.3)).labels)
    high = np.count_nonzero(postprocess(soft, replace(base, mask_threshold=0.8)).labels)
    assert low > 2 * high > 0


def test_empty_and_outside_boxes():
    assert postprocess(make_maps([]), MaskRCNNParams()).count == 0
    outside = make_maps([(np.array([70, 70, 90, 90], np.float32), 0.9, np.ones((28, 28), np.float16))])
    inst = postprocess(outside, replace(MaskRCNNParams(), allow_overlaps=True))
    assert inst.count == 0 and inst.masks.shape == (0, 64, 64)
    # a box over the image edge is clipped
    y0, x0, patch = paste_mask(np.ones((28, 28), np.float32), np.array([-5, -5, 10, 10], np.float32), (64, 64))
    assert (y0, x0) == (0, 0) and patch.shape[0] <= 12


def test_score_map_is_the_best_weighted_probability():
    maps = make_maps([disk_detection(30, 24, 10, 0.6), disk_detection(30, 38, 10, 0.8)])
    sm = score_map(maps.extra, (64, 64))
    assert sm.dtype == np.float32 and 0 <= sm.min() and sm.max() <= 0.8 + 1e-6
    assert sm[30, 38] == pytest.approx(0.8, abs=1e-3) and sm[30, 20] == pytest.approx(0.6, abs=1e-3)


def test_params_have_ranges_and_a_bool():
    specs = {s.name: s for s in param_specs(MaskRCNNParams)}
    assert specs["allow_overlaps"].kind is bool and specs["min_size"].kind is int
    assert params_from_dict(MaskRCNNParams, {"allow_overlaps": True, "nms_iou": 0.3}).allow_overlaps is True

"""False positives / false negatives by the GlaS and IoU rules, agreeing with the metrics' counts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.evaluation.error_map import BOTH, FALSE_NEGATIVE, FALSE_POSITIVE, error_ids, error_map
from napari_instance_tuner.core.evaluation.metrics import average_precision, evaluate


def handmade() -> tuple[np.ndarray, np.ndarray]:
    """Reference: objects 1, 2, 3 (10 x 10 squares) and 4 (4 x 10). Prediction (non-consecutive ids):

    10 = object 1 exactly (TP both rules); 20 = 60 % of object 2 (GlaS TP, IoU 0.6 TP);
    30 = 40 % of object 3 (FP and FN by both rules); 40 = object 4 plus a wide margin covering all of it
    (GlaS TP, IoU 40/100 = 0.4: FP + FN by IoU); 50 = in the background (FP).
    """
    ref = np.zeros((40, 60), np.int32)
    ref[0:10, 0:10] = 1
    ref[0:10, 20:30] = 2
    ref[20:30, 0:10] = 3
    ref[23:27, 25:35] = 4
    pred = np.zeros_like(ref)
    pred[0:10, 0:10] = 10
    pred[0:6, 20:30] = 20
    pred[20:24, 0:10] = 30
    pred[20:30, 25:35] = 40
    pred[35:38, 50:58] = 50
    return pred, ref


def test_glas_rule_on_a_handmade_pair():
    pred, ref = handmade()
    ids = error_ids(pred, ref, "glas")
    assert ids.false_positives.tolist() == [30, 50] and ids.false_negatives.tolist() == [3]
    m = evaluate(pred, ref)
    assert (m["fp"], m["fn"]) == (2, 1)


def test_iou_rule_on_a_handmade_pair():
    pred, ref = handmade()
    ids = error_ids(pred, ref, "iou")
    assert ids.false_positives.tolist() == [30, 40, 50] and ids.false_negatives.tolist() == [3, 4]
    ap = average_precision(pred, ref, thresholds=[0.5])
    assert ap["ap50"] == pytest.approx(2 / (2 + 3 + 2))


def test_exactly_half_is_not_a_match():
    ref = np.zeros((4, 10), np.int32)
    ref[:, :] = 1
    pred = np.zeros_like(ref)
    pred[:, :5] = 7  # exactly 50 % of the reference: a false positive, as in the official GlaS code
    ids = error_ids(pred, ref)
    assert ids.false_positives.tolist() == [7] and ids.false_negatives.tolist() == [1]


def test_ties_go_to_the_smallest_reference_label():
    ref = np.zeros((1, 16), np.int32)
    ref[0, :12], ref[0, 12:] = 3, 5
    pred = np.zeros_like(ref)
    pred[0, 8:] = 1  # 4 pixels of each: the partner is 3 (1/3 covered: FP), not 5 (all covered)
    ids = error_ids(pred, ref)
    assert ids.false_positives.tolist() == [1] and ids.false_negatives.tolist() == [3, 5]
    assert (evaluate(pred, ref)["fp"], evaluate(pred, ref)["fn"]) == (1, 2)


@pytest.mark.parametrize("seed", range(6))
def test_counts_agree_with_the_metrics_on_random_labels(seed, disks_labels):
    rng = np.random.default_rng(seed)
    centres = rng.integers(8, 56, (6, 2))
    ref = disks_labels((64, 64), [tuple(c) for c in centres], 7)
    pred = disks_labels((64, 64), [tuple(c + rng.integers(-5, 6, 2)) for c in centres[:5]], int(rng.integers(4, 10)))
    pred[rng.random(pred.shape) < 0.01] = 0
    m = evaluate(pred, ref)
    ids = error_ids(pred, ref, "glas")
    assert (len(ids.false_positives), len(ids.false_negatives)) == (m["fp"], m["fn"])
    iou = error_ids(pred, ref, "iou")
    tp = m["n_pred"] - len(iou.false_positives)
    assert tp == m["n_gt"] - len(iou.false_negatives)
    assert m["ap50"] == pytest.approx(tp / (tp + len(iou.false_positives) + len(iou.false_negatives)))


def test_error_map_paints_the_wrong_objects():
    pred, ref = handmade()
    errors, (ids,) = error_map(pred, ref, "glas")
    assert errors.dtype == np.uint8 and errors.shape == pred.shape
    assert np.all(errors[pred == 50] == FALSE_POSITIVE)
    assert np.all(errors[(pred == 30) & (ref == 3)] == BOTH)  # an FP over a missed object
    assert np.all(errors[(ref == 3) & (pred == 0)] == FALSE_NEGATIVE)
    assert not errors[(pred == 10) | (pred == 20) | (pred == 40)].any()
    assert ids.false_negatives.tolist() == [3]


def test_error_map_of_stacks_is_slice_by_slice_and_checks_its_input():
    pred, ref = handmade()
    errors, ids = error_map(np.stack([pred, ref]), np.stack([ref, ref]))
    assert len(ids) == 2 and not errors[1].any() and np.array_equal(errors[0], error_map(pred, ref)[0])
    both_empty, (none,) = error_map(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert not both_empty.any() and none.false_positives.size == none.false_negatives.size == 0
    with pytest.raises(InstanceTunerError, match="differ"):
        error_map(pred, ref[:-1])
    with pytest.raises(InstanceTunerError, match="unknown matching rule"):
        error_ids(pred, ref, "dice")

"""Tests of core.evaluation.metrics: hand-computed cases, conventions, cross-checks against reference ports.

Every image is 10x10 unless said otherwise; squares are written as numpy slices, e.g. [2:5, 2:5]
is the 3x3 square of rows 2..4 and columns 2..4 (9 pixels).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_instance_tuner.core.errors import InputImageError
from napari_instance_tuner.core.evaluation import metrics as M

SQ2 = math.sqrt(2.0)


def lab(*boxes, shape=(10, 10)):
    """Label image with object k+1 = boxes[k] (a (row slice, col slice) pair); later boxes win."""
    out = np.zeros(shape, np.int32)
    for k, (rs, cs) in enumerate(boxes):
        out[rs, cs] = k + 1
    return out


def stack(*boxes, shape=(10, 10)):
    out = np.zeros((len(boxes), *shape), bool)
    for k, (rs, cs) in enumerate(boxes):
        out[k, rs, cs] = True
    return out


def box(r0, r1, c0, c1):
    return (slice(r0, r1), slice(c0, c1))


EMPTY = np.zeros((10, 10), np.int32)


# --------------------------------------------------------------------------------------------
# Perfect prediction
# --------------------------------------------------------------------------------------------


def test_perfect_prediction_with_other_label_values():
    gt = lab(box(1, 4, 1, 4), box(5, 9, 5, 9))
    pred = np.zeros_like(gt)
    pred[gt == 1] = 7  # labels need not match or be contiguous
    pred[gt == 2] = 3
    r = M.evaluate(pred, gt)
    assert list(r) == list(M.EVALUATE_KEYS)
    for key in ("object_f1", "precision", "recall", "object_dice", "pixel_dice", "pixel_iou", "aji"):
        assert r[key] == 1.0, key
    for key in ("ap50", "ap60", "ap70", "ap80", "ap90", "mean_ap"):
        assert r[key] == 1.0, key
    assert r["object_hausdorff"] == 0.0
    assert (r["n_pred"], r["n_gt"], r["tp"], r["fp"], r["fn"]) == (2, 2, 2, 0, 0)
    assert (r["area_pred"], r["area_gt"]) == (25, 25)
    assert M.object_f1(pred, gt) == {"tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


# --------------------------------------------------------------------------------------------
# Split, merge, 50 % rule
# --------------------------------------------------------------------------------------------


def test_split_object():
    gt = lab(box(2, 8, 2, 8))  # 36 px
    pred = lab(box(2, 8, 2, 6), box(2, 8, 6, 8))  # 24 px (2/3 of gt) and 12 px (1/3)
    f1 = M.object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 1, 0)
    assert f1["precision"] == 0.5 and f1["recall"] == 1.0
    assert f1["f1"] == pytest.approx(2 / 3)
    # pred side: 2/3 * Dice 48/60 + 1/3 * Dice 24/48 = 0.7; gt side: Dice 0.8
    assert M.object_dice(pred, gt) == pytest.approx(0.75)
    # H(P1, G) = 2 (column 7 -> column 5), H(P2, G) = 4 (column 2 -> column 6)
    # pred side: 2/3 * 2 + 1/3 * 4 = 8/3; gt side: 2  ->  (8/3 + 2) / 2 = 7/3
    assert M.object_hausdorff(pred, gt) == pytest.approx(7 / 3)
    ap = M.average_precision(pred, gt)  # IoUs 2/3 and 1/3
    assert ap == pytest.approx({"ap50": 0.5, "ap60": 0.5, "ap70": 0.0, "ap80": 0.0, "ap90": 0.0, "mean_ap": 0.2})
    assert M.aggregated_jaccard_index(pred, gt) == pytest.approx(24 / 48)  # C 24, U 36 + unused 12
    assert M.pixel_dice(pred, gt) == 1.0 and M.pixel_iou(pred, gt) == 1.0


def test_merged_object():
    gt = lab(box(2, 8, 1, 4), box(2, 8, 6, 9))  # two 18 px objects
    pred = lab(box(2, 8, 1, 9))  # one 48 px object covering both
    f1 = M.object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 0, 1)
    assert f1["f1"] == pytest.approx(2 / 3)
    assert M.object_dice(pred, gt) == pytest.approx(36 / 66)  # every Dice is 2*18/(48+18)
    assert M.object_hausdorff(pred, gt) == pytest.approx(5.0)  # H(P, G1) = H(P, G2) = 5
    assert M.average_precision(pred, gt)["mean_ap"] == 0.0  # IoU 18/48 < 0.5
    # official MoNuSeg AJI: the merged prediction serves both GT objects: C = 36, U = 48 + 48
    assert M.aji(pred, gt) == pytest.approx(0.375)
    assert M.pixel_dice(pred, gt) == pytest.approx(72 / 84)
    assert M.pixel_iou(pred, gt) == pytest.approx(36 / 48)
    ix = M.intersection_matrix(pred, gt)
    assert ix.shape == (1, 2) and ix.toarray().tolist() == [[18, 18]]


@pytest.mark.parametrize(
    ("n_pixels", "is_tp"),
    [(49, False), (50, False), (51, True)],  # GT = whole 10x10 image (100 px)
)
def test_fifty_percent_rule_is_strict(n_pixels, is_tp):
    gt = np.ones((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    pred.ravel()[:n_pixels] = 1
    r = M.object_f1(pred, gt)
    if is_tp:
        assert r == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    else:
        assert r == {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_two_halves_of_one_object_are_both_false_positives():
    gt = lab(box(2, 8, 2, 8))
    pred = lab(box(2, 8, 2, 5), box(2, 8, 5, 8))  # exactly 50 % each
    assert M.object_f1(pred, gt) == {"tp": 0, "fp": 2, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}


# --------------------------------------------------------------------------------------------
# False positive far away, nearest object by Hausdorff distance
# --------------------------------------------------------------------------------------------


def test_false_positive_far_away():
    gt = lab(box(0, 3, 0, 3))
    pred = lab(box(0, 3, 0, 3), box(7, 10, 7, 10))
    r = M.evaluate(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["object_f1"] == pytest.approx(2 / 3)
    assert r["object_dice"] == pytest.approx(0.75)  # pred side 1/2, gt side 1
    # the FP overlaps nothing: its partner is the nearest GT object, H = |(9,9)-(2,2)| = 7 sqrt 2
    assert r["object_hausdorff_pred_term"] == pytest.approx(0.5 * 7 * SQ2)
    assert r["object_hausdorff_gt_term"] == 0.0
    assert r["object_hausdorff"] == pytest.approx(1.75 * SQ2)
    assert [r[k] for k in ("ap50", "ap60", "ap70", "ap80", "ap90", "mean_ap")] == [0.5] * 6
    assert r["aji"] == pytest.approx(0.5)  # C 9, U 9 + unused 9
    assert r["pixel_dice"] == pytest.approx(2 / 3) and r["pixel_iou"] == pytest.approx(0.5)


def test_nearest_object_is_chosen_by_hausdorff_not_by_gap():
    # P = pixel (0,0). G1 = row 2 (gap 2, but H = |(2,9)-(0,0)| = sqrt 85). G2 = pixel (0,4), H = 4.
    pred = np.zeros((10, 10), np.int32)
    pred[0, 0] = 1
    gt = np.zeros((10, 10), np.int32)
    gt[2, :] = 1
    gt[0, 4] = 2
    expected = 0.5 * (4.0 + (10 * math.sqrt(85) + 1 * 4.0) / 11)
    assert M.object_hausdorff(pred, gt) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# Hausdorff values
# --------------------------------------------------------------------------------------------


def test_square_shifted_by_three_pixels():
    gt = lab(box(2, 5, 2, 5))
    pred = lab(box(2, 5, 5, 8))  # touching, no overlap
    assert M.hausdorff_distance(pred > 0, gt > 0) == 3.0
    assert M.object_hausdorff(pred, gt) == 3.0
    gt2 = lab(box(1, 5, 1, 5))
    pred2 = lab(box(1, 5, 4, 8))  # overlapping by one column (25 %)
    assert M.hausdorff_distance(pred2, gt2) == 3.0
    assert M.object_hausdorff(pred2, gt2) == 3.0
    assert M.object_f1(pred2, gt2)["f1"] == 0.0


def test_hausdorff_of_large_objects():
    # > 4096 pixels: the block-wise branch-and-bound path
    gt = lab(box(0, 80, 0, 80), shape=(100, 100))  # 6400 px
    pred = lab(box(0, 10, 0, 10), shape=(100, 100))
    assert M.object_hausdorff(pred, gt) == pytest.approx(70 * SQ2)  # (79,79) -> (9,9)
    square = np.zeros((100, 100), bool)
    square[10:90, 10:90] = True
    frame = np.zeros((100, 100), bool)
    frame[[0, 99], :] = True
    frame[:, [0, 99]] = True
    # the square's centre pixels are 49 px from the frame; the frame's corners 10 sqrt 2 from the square
    assert M.hausdorff_distance(square, frame) == 49.0


def test_hausdorff_distance_conventions_and_interior_points():
    a = np.zeros((10, 10), bool)
    assert M.hausdorff_distance(a, a) == 0.0
    b = a.copy()
    b[4, 4] = True
    assert M.hausdorff_distance(a, b) == math.inf
    # a ring around a point: the farthest ring pixel from the centre is a corner (3 sqrt 2),
    # the point's distance to the ring is 3 -> symmetric H = 3 sqrt 2
    ring = np.zeros((10, 10), bool)
    ring[1:8, 1:8] = True
    ring[2:7, 2:7] = False
    assert M.hausdorff_distance(ring, b) == pytest.approx(3 * SQ2)
    # a filled square inside a frame: the farthest point of the square from the frame is its
    # centre (4), not a boundary pixel (2); the frame's corners are 2 sqrt 2 from the square
    square = np.zeros((10, 10), bool)
    square[2:7, 2:7] = True
    frame = np.zeros((10, 10), bool)
    frame[0:9, 0:9] = True
    frame[1:8, 1:8] = False
    assert M.hausdorff_distance(square, frame) == 4.0


# --------------------------------------------------------------------------------------------
# Empty inputs
# --------------------------------------------------------------------------------------------


def test_empty_prediction():
    gt = lab(box(2, 5, 2, 5))
    r = M.evaluate(EMPTY, gt)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (0, 0, 1, 0, 1)
    assert r["object_f1"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0
    assert r["object_dice"] == 0.0
    assert r["object_hausdorff"] == math.inf
    assert r["pixel_dice"] == 0.0 and r["pixel_iou"] == 0.0
    assert r["mean_ap"] == 0.0 and r["ap50"] == 0.0
    assert r["aji"] == 0.0


def test_empty_ground_truth():
    pred = lab(box(2, 5, 2, 5))
    r = M.evaluate(pred, EMPTY)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (0, 1, 0, 1, 0)
    assert r["object_f1"] == 0.0
    assert r["object_dice"] == 0.0
    assert r["object_hausdorff"] == math.inf
    assert r["pixel_dice"] == 0.0 and r["pixel_iou"] == 0.0
    assert r["mean_ap"] == 0.0
    assert r["aji"] == 0.0


def test_both_empty():
    r = M.evaluate(EMPTY, EMPTY)
    for key in ("object_f1", "precision", "recall", "object_dice", "pixel_dice", "pixel_iou", "mean_ap", "aji"):
        assert r[key] == 1.0, key
    assert r["object_hausdorff"] == 0.0
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (0, 0, 0, 0, 0)
    assert M.object_f1(EMPTY, EMPTY) == {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert M.object_hausdorff(np.zeros((0, 10, 10), bool), EMPTY) == 0.0


# --------------------------------------------------------------------------------------------
# Overlapping instance stacks
# --------------------------------------------------------------------------------------------


def test_overlapping_stack_exact_prediction_is_perfect():
    gt = stack(box(1, 6, 1, 6), box(3, 8, 3, 8))  # 25 px each, 9 px overlap
    pred = gt[::-1].copy()
    r = M.evaluate(pred, gt)
    for key in ("object_f1", "object_dice", "pixel_dice", "pixel_iou", "mean_ap", "ap90", "aji"):
        assert r[key] == 1.0, key
    assert r["object_hausdorff"] == 0.0
    assert (r["tp"], r["fp"], r["fn"], r["area_gt"]) == (2, 0, 0, 50)
    assert M.intersection_matrix(pred, gt).toarray().tolist() == [[9, 25], [25, 9]]


def test_label_prediction_against_overlapping_stack():
    gt = stack(box(1, 6, 1, 6), box(3, 8, 3, 8))
    pred = lab(box(3, 8, 3, 8), box(1, 6, 1, 6))  # label 2 = G1 (25 px), label 1 = G2 minus overlap (16)
    assert M.intersection_matrix(pred, gt).toarray().tolist() == [[0, 16], [25, 9]]
    assert M.object_f1(pred, gt)["f1"] == 1.0  # 16/25 > 0.5
    d = 32 / 41  # Dice(G2, its 16 px part)
    assert M.object_dice(pred, gt) == pytest.approx(0.5 * ((25 + 16 * d) / 41 + (1 + d) / 2))
    # H(G2 part, G2) = 3: the overlap corner (3,3) is 3 px from the L-shaped part
    assert M.object_hausdorff(pred, gt) == pytest.approx(0.5 * (16 * 3 / 41 + 1.5))
    # IoUs 1 and 16/25 = 0.64
    ap = M.average_precision(pred, gt)
    assert ap == pytest.approx({"ap50": 1.0, "ap60": 1.0, "ap70": 1 / 3, "ap80": 1 / 3, "ap90": 1 / 3, "mean_ap": 0.6})
    assert M.aji(pred, gt) == pytest.approx(41 / 50)
    assert M.pixel_dice(pred, gt) == 1.0


def test_duplicate_predictions_in_a_stack_match_once():
    g = box(2, 5, 2, 5)
    gt = stack(g)
    pred = stack(g, g)
    f1 = M.object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 1, 0)
    assert f1["f1"] == pytest.approx(2 / 3)
    assert M.average_precision(pred, gt)["mean_ap"] == 0.5  # one-to-one: TP 1, FP 1
    assert M.aji(pred, gt) == 0.5  # C 9, U 9 + unused duplicate 9
    assert M.object_dice(pred, gt) == 1.0
    assert M.object_hausdorff(pred, gt) == 0.0


# --------------------------------------------------------------------------------------------
# AJI
# --------------------------------------------------------------------------------------------


def test_aji_hand_computed():
    gt = lab(box(0, 2, 0, 2), box(6, 9, 6, 9))  # 4 px, 9 px
    pred = lab(box(0, 2, 0, 3), box(4, 5, 0, 2))  # 6 px (IoU 4/6 with G1), 2 px overlapping nothing
    # C = 4; U = |G1 u P1| 6 + unmatched G2 9 + unused P2 2 = 17
    assert M.aggregated_jaccard_index(pred, gt) == pytest.approx(4 / 17)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def test_aggregate_official_pooling():
    gt1 = lab(box(1, 4, 1, 4), box(5, 9, 5, 9))
    img1 = M.evaluate(gt1, gt1)  # perfect, areas 25 / 25
    img2 = M.evaluate(lab(box(0, 3, 0, 3), box(7, 10, 7, 10)), lab(box(0, 3, 0, 3)))  # FP far away
    a = M.aggregate([img1, img2])
    assert list(a) == list(M.AGGREGATE_KEYS)
    assert (a["tp"], a["fp"], a["fn"], a["n_pred"], a["n_gt"], a["n_images"]) == (3, 1, 0, 4, 3, 2)
    assert a["precision"] == 0.75 and a["recall"] == 1.0
    assert a["object_f1"] == pytest.approx(6 / 7)  # pooled counts
    assert a["object_f1_image_mean"] == pytest.approx(5 / 6)  # (1 + 2/3) / 2
    # object Dice weighted over all objects: pred (25*1 + 18*0.5)/43, gt (25 + 9)/34 = 1
    assert a["object_dice"] == pytest.approx(77 / 86)
    assert a["object_dice_image_mean"] == pytest.approx(0.875)
    assert a["object_hausdorff"] == pytest.approx(63 * SQ2 / 86)  # pred (18 * 3.5 sqrt 2)/43, gt 0
    assert a["object_hausdorff_image_mean"] == pytest.approx(0.875 * SQ2)
    assert a["mean_ap"] == pytest.approx(0.75) and a["ap90"] == pytest.approx(0.75)
    assert a["aji"] == pytest.approx(0.75)
    assert a["pixel_dice"] == pytest.approx(5 / 6) and a["pixel_iou"] == pytest.approx(0.75)


def test_aggregate_edge_cases():
    a = M.aggregate([M.evaluate(EMPTY, EMPTY)])
    assert (a["object_f1"], a["object_dice"], a["object_hausdorff"], a["aji"]) == (1.0, 1.0, 0.0, 1.0)
    gt = lab(box(2, 5, 2, 5))
    b = M.aggregate([M.evaluate(gt, gt), M.evaluate(EMPTY, gt)])
    assert (b["tp"], b["fp"], b["fn"]) == (1, 0, 1)
    assert b["object_f1"] == pytest.approx(2 / 3)
    assert b["object_dice"] == pytest.approx(0.75)  # pred side 1, gt side (9*1 + 9*0)/18
    assert b["object_hausdorff"] == math.inf
    with pytest.raises(InputImageError):
        M.aggregate([])
    with pytest.raises(InputImageError, match="tp"):
        M.aggregate([{"object_f1": 1.0}])


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(InputImageError, match="spatial shape"):
        M.evaluate(np.zeros((10, 10), int), np.zeros((10, 11), int))
    with pytest.raises(InputImageError, match="spatial shape"):
        M.object_f1(np.zeros((2, 10, 10), bool), np.zeros((10, 11), int))
    with pytest.raises(ValueError, match="spatial shape"):  # InputImageError is a ValueError
        M.pixel_dice(np.zeros((10, 10), bool), np.zeros((11, 10), bool))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((10, 10), np.nan), "NaN"),
        (np.full((10, 10), 1.5), "non-integer"),
        (-np.ones((10, 10), int), "negative"),
        (np.ones((10, 10), bool), "boolean mask"),
        (np.ones(10, int), "shape"),
        (np.ones((1, 2, 10, 10), int), "shape"),
        (np.full((2, 10, 10), 2, np.uint8), "instance stack"),
        (np.full((10, 10), "a"), "dtype"),
    ],
)
def test_bad_inputs_raise(bad, match):
    with pytest.raises(InputImageError, match=match):
        M.evaluate(bad, np.zeros((10, 10), int))


def test_accepted_input_variants():
    gt = lab(box(1, 4, 1, 4), box(5, 9, 5, 9))
    assert M.evaluate(gt.astype(np.float32), gt)["object_f1"] == 1.0  # integral floats
    assert M.evaluate(gt.astype(np.uint16), gt.astype(np.int64))["aji"] == 1.0
    assert M.evaluate(M.to_stack(gt).astype(np.uint8), gt)["object_dice"] == 1.0  # 0/1 stack
    assert M.pixel_dice(gt > 0, gt) == 1.0  # binary masks allowed for pixel metrics
    big = np.where(gt > 0, gt.astype(np.int64) * 2**40, 0)  # huge sparse label values
    assert M.evaluate(big, gt)["mean_ap"] == 1.0


def test_to_stack():
    x = np.zeros((10, 10), np.int64)
    x[0:2, 0:2] = 7
    x[5:6, 5:9] = 3
    s = M.to_stack(x)
    assert s.dtype == bool and s.shape == (2, 10, 10)
    assert np.array_equal(s[0], x == 3) and np.array_equal(s[1], x == 7)  # label order
    padded = np.stack([s[0], np.zeros((10, 10), bool), s[1]])
    s2 = M.to_stack(padded)
    assert s2.shape == (2, 10, 10) and np.array_equal(s2, s)  # all-False masks dropped
    assert M.to_stack(EMPTY).shape == (0, 10, 10)


def test_ap_thresholds():
    gt = lab(box(2, 8, 2, 8))
    pred = lab(box(2, 8, 2, 6))  # IoU 2/3
    assert M.average_precision(pred, gt, thresholds=(0.55, 0.75)) == pytest.approx(
        {"ap55": 1.0, "ap75": 0.0, "mean_ap": 0.5}
    )
    with pytest.raises(InputImageError):
        M.average_precision(pred, gt, thresholds=(1.0,))
    with pytest.raises(InputImageError):
        M.average_precision(pred, gt, thresholds=())


# --------------------------------------------------------------------------------------------
# Cross-checks against straightforward reference ports on random images
# --------------------------------------------------------------------------------------------


def _ids(x):
    u = np.unique(x)
    return u[u != 0]


def _mode_nonzero(values):
    values = values[values != 0]
    if values.size == 0:
        return 0
    u, c = np.unique(values, return_counts=True)
    return u[np.argmax(c)]  # smallest label among ties, like MATLAB's mode


def _ref_hd(a, b):
    pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
    return max(cKDTree(pb).query(pa)[0].max(), cKDTree(pa).query(pb)[0].max())


def ref_f1(S, G):  # official F1score.m, line by line
    ls, lg = _ids(S), _ids(G)
    if ls.size == 0 and lg.size == 0:
        return 1.0
    if ls.size == 0 or lg.size == 0:
        return 0.0
    tp = 0
    for s in ls:
        g = _mode_nonzero(G[S == s])
        if g != 0 and np.sum((S == s) & (G == g)) / np.sum(G == g) > 0.5:
            tp += 1
    p, r = tp / ls.size, tp / lg.size
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def ref_object_dice(S, G):  # official ObjectDice.m
    ls, lg = _ids(S), _ids(G)
    if ls.size == 0 and lg.size == 0:
        return 1.0
    if ls.size == 0 or lg.size == 0:
        return 0.0

    def side(A, B, la):
        total, acc = np.sum(A > 0), 0.0
        for a in la:
            Ai = A == a
            b = _mode_nonzero(B[Ai])
            Bi = (B == b) if b != 0 else np.zeros_like(Ai)
            acc += Ai.sum() / total * 2 * np.sum(Ai & Bi) / (Ai.sum() + Bi.sum())
        return acc

    return 0.5 * (side(S, G, ls) + side(G, S, lg))


def ref_object_hausdorff(S, G):  # official ObjectHausdorff.m
    ls, lg = _ids(S), _ids(G)

    def side(A, B, la, lb):
        total, acc = np.sum(A > 0), 0.0
        for a in la:
            Ai = A == a
            b = _mode_nonzero(B[Ai])
            if b == 0:
                b = lb[int(np.argmin([_ref_hd(B == k, Ai) for k in lb]))]
            acc += Ai.sum() / total * _ref_hd(B == b, Ai)
        return acc

    return 0.5 * (side(S, G, ls, lg) + side(G, S, lg, ls))


def ref_aji(S, G):  # MoNuSeg aggregated_jaccard_index.m (2018-07-17)
    C = U = 0
    used = set()
    for g in _ids(G):
        Gi = G == g
        cands = _ids(S[Gi])
        if cands.size == 0:
            U += Gi.sum()
            continue
        best, ji = None, 0.0
        for s in cands:
            nji = np.sum(Gi & (S == s)) / np.sum(Gi | (S == s))
            if nji > ji:
                best, ji = s, nji
        C += np.sum(Gi & (S == best))
        U += np.sum(Gi | (S == best))
        used.add(best)
    U += sum(np.sum(S == s) for s in _ids(S) if s not in used)
    return C / U


def ref_ap(S, G, t):
    ls, lg = _ids(S), _ids(G)
    tp = sum(1 for s in ls for g in lg if np.sum((S == s) & (G == g)) / np.sum((S == s) | (G == g)) > t)
    return tp / (ls.size + lg.size - tp)


def random_labels(rng, shape=(32, 32), n=8):
    out = np.zeros(shape, np.int32)
    for _ in range(n):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        h, w = rng.integers(3, 12, size=2)
        out[r : r + h, c : c + w] = rng.integers(1, 40)  # repeated values merge objects, fine
    return out


def perturbed(rng, gt):
    pred = np.roll(gt, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    ids = _ids(pred)
    if ids.size:
        pred[pred == rng.choice(ids)] = 0  # drop one
    r, c = rng.integers(0, 28, size=2)
    pred[r : r + 4, c : c + 4] = 99  # add one (may split or cover others)
    return pred


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_ports_on_random_images(seed):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng)
    pred = perturbed(rng, gt)
    r = M.evaluate(pred, gt)
    assert r["object_f1"] == pytest.approx(ref_f1(pred, gt))
    assert r["object_dice"] == pytest.approx(ref_object_dice(pred, gt))
    assert r["object_hausdorff"] == pytest.approx(ref_object_hausdorff(pred, gt))
    assert r["aji"] == pytest.approx(ref_aji(pred, gt))
    for t in (0.5, 0.7, 0.9):
        assert r[f"ap{round(t * 100)}"] == pytest.approx(ref_ap(pred, gt, t))
    # the same images as stacks (and mixed) give the same numbers
    sp, sg = M.to_stack(pred), M.to_stack(gt)
    for a, b in ((sp, gt), (pred, sg), (sp, sg)):
        r2 = M.evaluate(a, b)
        for key in M.EVALUATE_KEYS:
            assert r2[key] == pytest.approx(r[key]), key


def test_label_path_on_a_large_image_with_hundreds_of_objects():
    # 17 x 17 = 289 squares of 50 px on a 1024 x 1024 image, prediction shifted by (2, 3)
    gt = np.zeros((1024, 1024), np.int32)
    k = 0
    for i in range(17):
        for j in range(17):
            k += 1
            gt[i * 60 : i * 60 + 50, j * 60 : j * 60 + 50] = k
    pred = np.zeros_like(gt)
    pred[2:, 3:] = gt[:-2, :-3]
    r = M.evaluate(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (289, 0, 0)
    assert r["object_hausdorff"] == pytest.approx(math.hypot(2, 3))
    assert r["ap80"] == 1.0  # IoU = 48*47 / (2*2500 - 48*47) = 0.822
    assert r["ap90"] == 0.0

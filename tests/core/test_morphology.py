import cv2
import numpy as np
import pytest

from napari_instance_tuner.core.inference.morphology import (
    close_open,
    connected_components,
    dilate,
    erode,
    grow_labels,
    relabel,
)


@pytest.mark.parametrize("radius", [1, 3, 5, 12, 25])
def test_disk_dilation_approximates_a_disk(radius):
    mask = np.zeros((81, 81), np.uint8)
    mask[40, 40] = 1
    approx = dilate(mask, radius).astype(bool)
    yy, xx = np.mgrid[-40:41, -40:41]
    disk = yy**2 + xx**2 <= radius**2
    # The octagon used for large radii is within ~20 % of the Euclidean disk (area and pixels).
    assert (approx != disk).sum() <= 0.2 * disk.sum()
    assert np.array_equal(approx, approx[::-1]) and np.array_equal(approx, approx[:, ::-1])
    assert approx[40, 40 + radius] and not approx[40, 41 + radius]


def test_erode_is_dual_of_dilate_and_radius_zero_is_identity():
    rng = np.random.default_rng(0)
    mask = (rng.random((40, 40)) > 0.5).astype(np.uint8)
    assert erode(mask, 0) is mask
    inv = (1 - mask).astype(np.uint8)
    assert np.array_equal(erode(mask, 6)[8:-8, 8:-8], (1 - dilate(inv, 6))[8:-8, 8:-8])


def test_close_open_fills_holes_and_removes_specks():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    mask[20, 20] = 0  # a hole
    mask[2, 2] = 1  # a speck
    out = close_open(mask, 1, 1)
    assert out[20, 20] == 1 and out[2, 2] == 0 and out[15, 15] == 1


def test_relabel_and_grow_labels():
    labels = np.array([[0, 3, 3, 0, 7, 0]], np.int32)
    keep = np.zeros(8, bool)
    keep[[3, 7]] = True
    assert relabel(labels, keep).tolist() == [[0, 1, 1, 0, 2, 0]]
    objects = np.zeros((1, 9), np.uint32)
    objects[0, 1] = 1
    objects[0, 7] = 2
    mask = np.ones((1, 9), np.uint8)
    mask[0, 4] = 0
    grown = grow_labels(objects, mask, 2)
    assert grown.tolist() == [[1, 1, 1, 1, 0, 2, 2, 2, 2]]
    assert grow_labels(objects, mask, 0) is objects


def test_growing_only_the_kept_objects_equals_dropping_the_others_first():
    """``grow_labels(..., keep=)``: the objects not kept are background to the growth (kept ones grow over
    them); their unreached pixels keep their id until the relabel, and the result is the same as relabelling
    first (what the live post-processing did before, one full-image pass more)."""
    labels = np.zeros((1, 14), np.int32)
    labels[0, 1:3] = 1  # kept
    labels[0, 4:6] = 2  # dropped, next to 1: grown over
    labels[0, 11:13] = 3  # dropped, out of reach: keeps its id, then relabel drops it
    keep = np.array([True, True, False, False])  # keep[0] (background) is ignored
    mask = np.ones((1, 14), np.uint8)
    grown = grow_labels(labels, mask, 4, keep=keep)
    assert grown.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 0]]
    assert relabel(grown, keep).tolist() == grow_labels(relabel(labels, keep), mask, 4).tolist()
    rng = np.random.default_rng(0)
    for _ in range(20):  # random scenes: the same labels either way
        scene = (rng.random((40, 50)) < 0.02).astype(np.uint8)
        scene = cv2.dilate(scene, np.ones((5, 5), np.uint8))
        scene, n = connected_components(scene)
        keep = rng.random(n) < 0.6
        mask = (rng.random((40, 50)) < 0.8).astype(np.uint8)
        assert np.array_equal(relabel(grow_labels(scene, mask, 3, keep=keep), keep),
                              grow_labels(relabel(scene, keep), mask, 3))

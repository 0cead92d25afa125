import numpy as np
import pytest

from napari_instance_tuner.core.families.three_branch.targets import (
    PAPER_SCALE,
    TargetConfig,
    boundary_pixels,
    centre_points,
    make_targets,
)


def test_boundary_pixels_of_a_square():
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 1
    edge = boundary_pixels(labels)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    expected[3:5, 3:5] = False
    assert np.array_equal(edge, expected)


def test_touching_objects_get_a_boundary_between_them():
    labels = np.zeros((6, 10), np.int32)
    labels[1:5, 1:5] = 1
    labels[1:5, 5:9] = 2
    edge = boundary_pixels(labels)
    assert edge[2, 4] and edge[2, 5]  # both sides of the contact line


def test_centre_points_bbox_and_inside_for_a_c_shape():
    labels = np.zeros((21, 21), np.int32)
    labels[2:19, 2:7] = 1  # a "C": bbox centre falls in the opening
    labels[2:7, 2:19] = 1
    labels[14:19, 2:19] = 1
    (bbox,) = centre_points(labels, "bbox")
    (inside,) = centre_points(labels, "inside")
    assert tuple(bbox) == (10, 10) and labels[tuple(bbox)] == 0
    assert labels[tuple(inside)] == 1


def test_widths_scale_with_pixel_scale(disks_labels):
    cfg = TargetConfig(boundary_width=11, centroid_width=14)
    assert cfg.widths_at(PAPER_SCALE) == pytest.approx((11, 14))
    assert cfg.widths_at(2 * PAPER_SCALE) == pytest.approx((22, 28))
    labels = disks_labels((96, 96), ((30, 30), (30, 62), (66, 46)), 14)
    thin = make_targets(labels, cfg, PAPER_SCALE)
    wide = make_targets(labels, cfg, 2 * PAPER_SCALE)
    assert wide[1].sum() > 1.7 * thin[1].sum()
    assert wide[2].sum() > 3 * thin[2].sum()  # disk area grows with the square of the width


def test_make_targets_values(disks_labels):
    labels = disks_labels()
    t = make_targets(labels, TargetConfig(boundary_width=3, centroid_width=5), PAPER_SCALE)
    assert t.shape == (3, 64, 64) and t.dtype == np.uint8
    assert np.array_equal(t[0], labels > 0)
    # Each object's centroid disk is around its bbox centre; 3 separate blobs.
    from scipy import ndimage as ndi

    assert ndi.label(t[2])[1] == 3
    assert t[2][20, 20] and t[2][46, 30]
    # Boundary band: ~3 px wide, around the edges, never in the middle of a disk.
    assert t[1][20, 11] and not t[1][20, 20]
    assert make_targets(np.zeros((5, 5), np.int32), TargetConfig(), 1.0).sum() == 0
    with pytest.raises(ValueError, match="integers"):
        make_targets(labels.astype(float), TargetConfig(), 1.0)

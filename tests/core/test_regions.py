"""Checked regions: shapes -> bool masks, coordinates between layers, and pair validation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.training.regions import check_pair_shapes, corrected_pair, rasterise, to_pixels


def rect(r0, c0, r1, c1) -> np.ndarray:
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def test_rectangle_covers_the_pixels_whose_centres_it_contains():
    mask = rasterise([rect(1.5, 2.5, 4.5, 6.5)], ["rectangle"], (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[2:5, 3:7] = True
    assert np.array_equal(mask, expected)
    # Edges through pixel centres include those pixels (napari: a pixel spans centre +- 0.5).
    mask = rasterise([rect(2, 3, 4, 5)], ["rectangle"], (10, 10))
    assert np.array_equal(mask, expected & (np.arange(10) <= 5))


def test_shapes_are_united_clipped_and_may_be_rotated_or_polygons():
    inside = rect(-5, -5, 2.2, 2.2)  # partly outside the image: clipped
    diamond = np.array([[5, 7], [7, 9], [9, 7], [7, 5]], float)  # a rotated square
    triangle = np.array([[0.0, 9.0], [0.0, 11.0], [3.0, 11.0]])
    mask = rasterise([inside, diamond, triangle], ["rectangle", "polygon", "polygon"], (12, 12))
    assert mask[:3, :3].all() and not mask[3, 3]
    assert mask[7, 7] and mask[5, 7] and mask[7, 9] and not mask[5, 5] and not mask[9, 9]
    assert mask[0, 9:12].all() and mask[2, 11] and not mask[2, 9]
    assert mask.sum() == 9 + 13 + (3 + 2 + 1 + 1)


def test_ellipse_is_filled_as_an_ellipse():
    box = rect(2, 2, 12, 22)  # centre (7, 12), semi-axes 5 and 10
    mask = rasterise([box], ["ellipse"], (16, 26))
    rr, cc = np.mgrid[:16, :26]
    expected = ((rr - 7) / 5) ** 2 + ((cc - 12) / 10) ** 2 <= 1
    assert np.array_equal(mask, expected)
    assert not mask[2, 2] and mask[7, 2] and mask[2, 12]


def test_lines_and_bad_vertices_are_refused():
    with pytest.raises(InstanceTunerError, match="line, which marks no area"):
        rasterise([np.array([[0, 0], [5, 5]], float)], ["line"], (8, 8))
    with pytest.raises(InstanceTunerError, match="vertices of shape"):
        rasterise([np.zeros((3, 2))], ["rectangle"], (8, 8))
    with pytest.raises(InstanceTunerError, match="2 shapes but 1"):
        rasterise([rect(0, 0, 1, 1), rect(0, 0, 1, 1)], ["rectangle"], (8, 8))


def test_to_pixels_maps_between_layers_and_drops_the_slice_axis():
    vertices = np.array([[3.0, 10.0, 20.0], [3.0, 30.0, 40.0]])  # (z, y, x) drawn on a stack
    out = to_pixels(vertices, src_scale=(1, 2, 2), src_translate=(0, 4, 0), dst_scale=(4, 4), dst_translate=(0, 8))
    assert out.tolist() == [[6.0, 8.0], [16.0, 18.0]]
    assert to_pixels(vertices).tolist() == [[10.0, 20.0], [30.0, 40.0]]


def test_check_pair_shapes():
    assert check_pair_shapes((20, 30, 3), True, (20, 30)) == (20, 30)
    assert check_pair_shapes((20, 30), False, (20, 30)) == (20, 30)
    assert check_pair_shapes((20, 30, 2), False, (20, 30)) == (20, 30)  # a 2-channel image
    with pytest.raises(InstanceTunerError, match="do not match"):
        check_pair_shapes((20, 30, 3), True, (20, 31))
    with pytest.raises(InstanceTunerError, match="2D images and 2D labels"):
        check_pair_shapes((5, 20, 30), False, (5, 20, 30))


def test_corrected_pair_validates_labels_and_region():
    image, labels = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32)
    region = rasterise([rect(0, 0, 3, 3)], ["rectangle"], (8, 8))
    pair = corrected_pair(image, labels, True, region)
    assert pair.region is region and pair.labels is labels
    with pytest.raises(InstanceTunerError, match="does not overlap"):
        corrected_pair(image, labels, True, np.zeros((8, 8), bool))
    with pytest.raises(InstanceTunerError, match="must be integers"):
        corrected_pair(image, labels.astype(float), True)
    with pytest.raises(InstanceTunerError, match="region of shape"):
        corrected_pair(image, labels, True, np.ones((4, 4), bool))

"""The skeleton-aware distance transform as the centroid target (issue 20, session 22; Lin et al. 2023)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_instance_tuner.core.families.three_branch.targets import TargetConfig, make_targets, skeleton_distance
from napari_instance_tuner.core.families.three_branch.train import BatchMaker, ThreeBranchTrainOptions, prepare_samples
from napari_instance_tuner.core.training.augment import AugmentConfig
from napari_instance_tuner.core.training.data import Sample


def l_shape():
    """int32 (80, 80): one L-shaped object, arms 16 px wide and 60 px long."""
    labels = np.zeros((80, 80), np.int32)
    labels[10:70, 10:26] = 1
    labels[54:70, 10:70] = 1
    return labels


def test_the_sdt_is_one_along_the_skeleton_and_falls_to_the_border():
    labels = np.zeros((40, 120), np.int32)
    labels[10:31, 10:110] = 1  # 21 rows: the skeleton is row 20
    energy = skeleton_distance(labels)
    assert energy.dtype == np.float32 and energy.shape == labels.shape
    assert not energy[labels == 0].any()
    assert np.all(energy[20, 25:95] == 1.0)  # the whole length, not one central point
    # d_B = 1 on the border row, d_S = 10: (1 / 11) ** 0.8
    assert energy[10, 60] == pytest.approx((1 / 11) ** 0.8, rel=1e-5)
    assert np.all(np.diff(energy[10:21, 60]) > 0)  # rises monotonically from the border to the skeleton
    # a smaller alpha widens the plateau
    assert skeleton_distance(labels, 0.4)[14, 60] > energy[14, 60]


def test_an_irregular_object_gets_one_core_that_follows_its_shape():
    labels = l_shape()
    core = skeleton_distance(labels) >= 0.5
    assert ndi.label(core)[1] == 1
    assert core[15:40, 10:26].any() and core[54:70, 45:70].any()  # both arms' ends
    # the inside-point disk of the same target size covers one spot only, far from the arms' ends
    disk = make_targets(labels, TargetConfig(centroid_mode="inside"), 1.0)[2]
    assert not disk[15:40, 10:26].any() or not disk[54:70, 45:70].any()


def test_touching_objects_get_cores_that_stay_apart():
    labels = np.zeros((40, 80), np.int32)
    labels[5:35, 5:40] = 1
    labels[5:35, 40:75] = 2  # touching along a whole column
    core = skeleton_distance(labels) >= 0.5
    n = ndi.label(core)[1]
    assert n == 2
    assert set(np.unique(labels[core])) == {1, 2}
    assert not core[:, 36:44].any()  # the cores keep clear of the contact


def test_make_targets_in_skeleton_mode_gives_the_sdt_as_a_float_centroid_channel():
    labels = l_shape()
    config = TargetConfig(boundary_width=3, centroid_mode="skeleton", skeleton_alpha=0.6)
    targets = make_targets(labels, config, 1.0)
    assert targets.dtype == np.float32 and targets.shape == (3, 80, 80)
    np.testing.assert_array_equal(targets[0], labels > 0)
    np.testing.assert_array_equal(targets[1], make_targets(labels, TargetConfig(boundary_width=3), 1.0)[1])
    np.testing.assert_array_equal(targets[2], skeleton_distance(labels, 0.6))
    assert make_targets(labels, TargetConfig(centroid_mode="inside"), 1.0).dtype == np.uint8  # unchanged


def test_a_tiny_object_still_gets_a_peak():
    labels = np.zeros((10, 10), np.int32)
    labels[4:6, 4:6] = 3  # smoothing erases its skeleton
    energy = skeleton_distance(labels)
    assert energy.max() == 1.0 and np.count_nonzero(energy) == 4


def test_options_record_the_mode_and_alpha_and_older_metadata_keeps_its_keys():
    targets = ThreeBranchTrainOptions(centroid_mode="skeleton", skeleton_alpha=0.5).targets()
    assert (targets.centroid_mode, targets.skeleton_alpha) == ("skeleton", 0.5)
    assert TargetConfig(**targets.to_dict()) == targets  # recorded in the checkpoint, read back by fine-tuning
    assert "skeleton_alpha" not in TargetConfig(centroid_mode="inside").to_dict()
    with pytest.raises(ValueError, match="skeleton"):
        make_targets(l_shape(), TargetConfig(centroid_mode="spine"), 1.0)


def test_batches_carry_the_sdt_through_crops():
    labels = l_shape()
    image = np.stack([(labels > 0) * 200 + 20] * 3, -1).astype(np.uint8)
    maker = BatchMaker(prepare_samples([Sample("s", image, labels)], 3, 1.0), crop=64, batch_size=2, pixel_scale=1.0,
                       targets=TargetConfig(3, centroid_mode="skeleton"), augment=AugmentConfig(enabled=False))
    _, y, _ = maker(np.random.default_rng(0))
    centroid = y[:, 2].numpy()
    assert centroid.max() == 1.0 and len(np.unique(centroid)) > 10  # a graded map, not a 0/1 mask
    foreground = y[:, 0].numpy() > 0
    assert not centroid[~foreground].any() and centroid[foreground].min() > 0


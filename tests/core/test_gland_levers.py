"""Issue 20's levers: HED stain jitter, elastic deformation, watershed post-processing, extra training data."""

import numpy as np
import pytest

from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams, postprocess
from napari_instance_tuner.core.families.three_branch.targets import TargetConfig, make_targets
from napari_instance_tuner.core.families.three_branch.train import BatchMaker, prepare_samples
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.params import params_from_dict, params_to_dict
from napari_instance_tuner.core.training.augment import AugmentConfig, elastic, photometric, stain_jitter
from napari_instance_tuner.core.training.data import Sample, extra_training_samples

PLAIN = {"close_radius": 0, "open_radius": 0, "boundary_erosion": 0, "centroid_erosion": 0, "min_size": 0, "grow_back": 0}


def he_like(shape=(32, 48), seed=0):
    """An RGB float image in [0, 1] with haematoxylin-blue and eosin-pink regions."""
    rng = np.random.default_rng(seed)
    image = np.empty((3, *shape), np.float32)
    image[:] = np.array([0.85, 0.45, 0.7], np.float32)[:, None, None]  # eosin pink
    image[:, : shape[0] // 2] = np.array([0.35, 0.25, 0.6], np.float32)[:, None, None]  # haematoxylin
    return np.clip(image + rng.normal(0, 0.02, image.shape).astype(np.float32), 0, 1)


def test_stain_jitter_changes_stains_not_shape_and_zero_strength_is_the_identity():
    image = he_like()
    rng = np.random.default_rng(1)
    out = stain_jitter(rng, image, 0.2)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert np.abs(out - image).mean() > 0.005
    same = stain_jitter(rng, image, 0.0)
    np.testing.assert_allclose(same, image, atol=1e-5)  # exact although pink lies outside the H&E gamut


def test_stain_jitter_fires_only_on_rgb_and_with_its_probability():
    rng = np.random.default_rng(0)
    only_stain = AugmentConfig(p_color=0, p_blur=0, p_noise=0, p_stain=1.0, stain_strength=0.2)
    grey = np.full((1, 8, 8), 0.5, np.float32)
    assert np.array_equal(photometric(rng, grey, only_stain), grey)
    image = he_like()
    assert not np.allclose(photometric(rng, image, only_stain), image, atol=0.005)
    never = AugmentConfig(p_color=0, p_blur=0, p_noise=0, p_stain=0.0)
    assert np.array_equal(photometric(rng, image, never), image)


@pytest.mark.parametrize("field, value", [("p_stain", 1.5), ("p_elastic", -0.1), ("elastic_alpha", float("nan")),
                                          ("stain_strength", -1.0)])
def test_augment_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_elastic_deforms_image_and_labels_with_one_field(disks_labels):
    labels = disks_labels((64, 64), ((20, 20), (44, 40)), 10).astype(np.int32)
    image = np.stack([labels.astype(np.float32)] * 3)  # the image carries the labels: alignment is checkable
    rng = np.random.default_rng(0)
    unchanged = elastic(rng, AugmentConfig(p_elastic=0.0), image, labels)
    assert unchanged[0] is image and unchanged[1] is labels
    config = AugmentConfig(p_elastic=1.0, elastic_alpha=6.0, elastic_sigma=8.0)
    warped_image, warped_labels = elastic(rng, config, image, labels)
    assert warped_image.shape == image.shape and warped_image.dtype == np.float32
    assert warped_labels.shape == labels.shape and warped_labels.dtype == np.int32
    assert not np.array_equal(warped_labels, labels)  # it moved
    assert set(np.unique(warped_labels)) == {0, 1, 2}  # nearest neighbour: no new ids
    # Same field for both: the image's (bilinear) values round to the labels almost everywhere.
    agree = np.round(warped_image[0]) == warped_labels
    assert agree.mean() > 0.97
    assert abs((warped_labels > 0).sum() / (labels > 0).sum() - 1) < 0.25  # a deformation, not a wipe-out


def test_batch_maker_deforms_before_the_targets_are_made(disks_labels):
    rng = np.random.default_rng(0)
    labels = disks_labels((48, 48), ((14, 14), (14, 34), (34, 24)), 9)
    image = np.stack([(labels > 0) * 200 + rng.integers(0, 30, labels.shape)] * 3, -1).astype(np.uint8)
    prepared = prepare_samples([Sample("s", image, labels)], 3, 1.0)
    only_elastic = AugmentConfig(p_scale=0, p_color=0, p_blur=0, p_noise=0, p_elastic=1.0, elastic_alpha=5.0,
                                 elastic_sigma=6.0)
    maker = BatchMaker(prepared, crop=48, batch_size=4, pixel_scale=1.0, augment=only_elastic)
    x, y, _ = maker(np.random.default_rng(2))
    bright, foreground = x[:, 0].numpy() > 0.5, y[:, 0].numpy() > 0.5
    assert (bright == foreground).mean() > 0.97  # targets follow the deformed image


def perfect_maps(labels):
    t = make_targets(labels, TargetConfig(3, 5), 256 / 775).astype(np.float32)
    return Maps({"foreground": t[0], "boundary": t[1], "centroid": t[2]})


def test_watershed_splits_touching_objects_and_fills_the_foreground():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 8:30] = 1
    labels[10:30, 30:52] = 2
    out = postprocess(perfect_maps(labels), ThreeBranchParams(watershed=True, **PLAIN)).labels
    assert out.dtype == np.uint32 and out.max() == 2
    assert np.array_equal(out > 0, labels > 0)  # no pixel of the foreground lost to boundaries
    for i in (1, 2):
        _, counts = np.unique(out[labels == i], return_counts=True)
        assert counts.max() / counts.sum() > 0.9


def test_watershed_does_not_cut_an_object_along_a_spurious_boundary():
    labels = np.zeros((40, 80), np.int32)
    labels[8:32, 6:74] = 1  # one long gland
    maps = perfect_maps(labels)
    maps.arrays["boundary"][:, 39:42] = 1.0  # a predicted boundary across its middle
    maps.arrays["centroid"][:] = 0
    maps.arrays["centroid"][17:23, 15:25] = 1.0  # one centroid, in the left half
    paper = postprocess(maps, ThreeBranchParams(**PLAIN)).labels
    assert paper.max() == 1 and (paper > 0).sum() < 0.6 * (labels > 0).sum()  # cut; the right half dropped
    flooded = postprocess(maps, ThreeBranchParams(watershed=True, **PLAIN)).labels
    assert flooded.max() == 1 and np.array_equal(flooded > 0, labels > 0)


def test_watershed_components_without_a_marker_follow_require_centroid():
    labels = np.zeros((40, 60), np.int32)
    labels[5:20, 5:20] = 1
    labels[25:38, 35:55] = 2
    maps = perfect_maps(labels)
    maps.arrays["centroid"][20:] = 0  # object 2 has no centroid
    dropped = postprocess(maps, ThreeBranchParams(watershed=True, **PLAIN)).labels
    assert dropped.max() == 1 and dropped[30, 45] == 0
    kept = postprocess(maps, ThreeBranchParams(watershed=True, require_centroid=False, **PLAIN)).labels
    assert kept.max() == 2 and kept[30, 45] > 0 and kept[10, 10] > 0
    small = postprocess(maps, ThreeBranchParams(watershed=True, require_centroid=False,
                                                **{**PLAIN, "min_size": 250})).labels
    assert small.max() == 1 and small[30, 45] > 0  # S_min still applies: the 225-px object goes


def test_watershed_is_off_by_default_and_old_parameter_files_still_load():
    assert ThreeBranchParams().watershed is False
    old = params_to_dict(ThreeBranchParams())
    del old["watershed"]
    assert params_from_dict(ThreeBranchParams, old).watershed is False


def test_large_objects_without_a_centroid_are_kept_only_when_asked():
    labels = np.zeros((60, 90), np.int32)
    labels[5:25, 5:25] = 1  # 400 px, with its centroid
    labels[32:56, 5:85] = 2  # 1 920 px: a long gland without a centroid
    labels[5:17, 40:52] = 3  # 144 px: a fragment without a centroid
    maps = perfect_maps(labels)
    maps.arrays["centroid"][:] = 0
    maps.arrays["centroid"][12:18, 12:18] = 1.0
    paper = postprocess(maps, ThreeBranchParams(**PLAIN)).labels
    assert paper.max() == 1 and paper[10, 10] > 0  # the paper's filter drops both objects without a centroid
    kept = postprocess(maps, ThreeBranchParams(keep_large_without_centroid=1000, **PLAIN)).labels
    assert kept.max() == 2 and kept[10, 10] > 0 and kept[44, 45] > 0 and kept[10, 45] == 0
    every = postprocess(maps, ThreeBranchParams(keep_large_without_centroid=50, **PLAIN)).labels
    assert every.max() == 3
    assert postprocess(maps, ThreeBranchParams(keep_large_without_centroid=50, require_centroid=False,
                                               **PLAIN)).labels.max() == 3
    old = params_to_dict(ThreeBranchParams())
    del old["keep_large_without_centroid"]  # parameter files written before session 16
    assert params_from_dict(ThreeBranchParams, old).keep_large_without_centroid == 0


def test_split_radius_cuts_the_neck_a_gap_in_the_boundary_leaves():
    labels = np.zeros((40, 60), np.int32)
    labels[8:32, 6:30] = 1
    labels[8:32, 30:54] = 2
    maps = perfect_maps(labels)
    maps.arrays["boundary"][18:22, 25:35] = 0  # a 4-pixel gap in the boundary between the two glands
    joined = postprocess(maps, ThreeBranchParams(**PLAIN)).labels
    assert joined.max() == 1  # the paper's steps count the pair as one object
    plain_grown = {**PLAIN, "grow_back": 6}
    split = postprocess(maps, ThreeBranchParams(split_radius=3, **plain_grown)).labels
    assert split.max() == 2
    for i in (1, 2):  # each object is one gland, back to (nearly) its whole extent
        gland = labels == i
        assert np.bincount(split[gland]).argmax() > 0
        found = split == np.bincount(split[gland]).argmax()
        assert (found & gland).sum() / (found | gland).sum() > 0.9
    single = np.zeros((40, 60), np.int32)
    single[8:32, 10:50] = 1  # no neck: the opening changes nothing that grow-back does not restore
    alone = perfect_maps(single)
    assert np.array_equal(postprocess(alone, ThreeBranchParams(split_radius=3, **plain_grown)).labels,
                          postprocess(alone, ThreeBranchParams(**plain_grown)).labels)
    old = params_to_dict(ThreeBranchParams())
    del old["split_radius"]  # parameter files written before session 18
    assert params_from_dict(ThreeBranchParams, old).split_radius == 0


@pytest.fixture
def write_split(disks_labels):
    """``write_split(folder, names)``: a split folder (images/, labels/) of one-disk 16 x 16 images."""

    def make(folder, names):
        import tifffile
        from imageio.v3 import imwrite

        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        for n in names:
            labels = disks_labels((16, 16), ((8, 8),), 4).astype(np.uint16)
            imwrite(folder / "images" / f"{n}.png", np.stack([labels.astype(np.uint8) * 100] * 3, -1))
            tifffile.imwrite(folder / "labels" / f"{n}.tif", labels)

    return make


def test_extra_training_data_leaves_out_validation_patients(tmp_path, write_split):
    grade = tmp_path / "Grade.csv"
    grade.write_text("name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"
                     "testA_1,4, benign, healthy\ntestA_2,7, malignant, x\ntestA_3,4, benign, healthy\n")
    write_split(tmp_path / "testA", ["testA_1", "testA_2", "testA_3"])
    samples = extra_training_samples([tmp_path / "testA"], held_patients={"4"})
    assert [s.name for s in samples] == ["testA_2"]
    assert len(extra_training_samples([tmp_path / "testA"], held_patients=set())) == 3

import numpy as np
import pytest

from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams, postprocess
from napari_instance_tuner.core.families.three_branch.targets import TargetConfig, make_targets
from napari_instance_tuner.core.family import Maps

NO_DENOISE = {"close_radius": 0, "open_radius": 0, "boundary_erosion": 0, "centroid_erosion": 0, "min_size": 0,
              "grow_back": 0}


def perfect_maps(labels, boundary_width=3, centroid_width=5):
    t = make_targets(labels, TargetConfig(boundary_width, centroid_width), 256 / 775).astype(np.float32)
    return Maps({"foreground": t[0], "boundary": t[1], "centroid": t[2]})


def touching_pair():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 8:30] = 1
    labels[10:30, 30:52] = 2
    return labels


def test_boundaries_separate_touching_objects():
    labels = touching_pair()
    maps = perfect_maps(labels)
    merged = postprocess(maps, ThreeBranchParams(subtract_boundaries=False, **NO_DENOISE)).labels
    split = postprocess(maps, ThreeBranchParams(**NO_DENOISE)).labels
    assert merged.max() == 1 and split.max() == 2
    assert merged.dtype == np.uint32 and split.dtype == np.uint32


def test_grow_back_restores_object_extent():
    labels = touching_pair()
    maps = perfect_maps(labels)
    shrunk = postprocess(maps, ThreeBranchParams(**NO_DENOISE)).labels
    grown = postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "grow_back": 10})).labels
    assert (shrunk > 0).sum() < 0.85 * (labels > 0).sum()
    assert (grown > 0).sum() == (labels > 0).sum()  # exactly the foreground again
    assert grown.max() == 2
    # Each grown object covers its own ground-truth object (objects stay separate).
    for i in (1, 2):
        _, counts = np.unique(grown[labels == i], return_counts=True)
        assert counts.max() / counts.sum() > 0.95


def test_objects_without_centroid_are_dropped():
    labels = touching_pair()
    maps = perfect_maps(labels)
    maps.arrays["centroid"][:, 30:] = 0  # remove object 2's centroid
    out = postprocess(maps, ThreeBranchParams(**NO_DENOISE)).labels
    assert out.max() == 1 and out[20, 15] == 1 and out[20, 45] == 0
    kept = postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "require_centroid": False})).labels
    assert kept.max() == 2


def test_min_size_and_thresholds(disks_labels):
    labels = disks_labels((64, 64), ((20, 20), (45, 45)), 3)  # two small disks of 29 px
    labels[5:25, 35:60] = 3  # a 500 px rectangle
    maps = perfect_maps(labels, 1, 3)
    out = postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "min_size": 100})).labels
    assert out.max() == 1 and out[15, 45] == 1
    maps.arrays["foreground"] *= 0.5
    assert postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "fg_threshold": 0.6})).labels.max() == 0


def test_denoise_removes_specks_and_erosion_removes_weak_centroids(disks_labels):
    labels = disks_labels((64, 64), ((32, 32),), 12)
    maps = perfect_maps(labels)
    maps.arrays["foreground"][5, 5] = 1.0
    maps.arrays["centroid"][5, 5] = 1.0  # a speck with its own centroid pixel
    noisy = postprocess(maps, ThreeBranchParams(**NO_DENOISE)).labels
    clean = postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "open_radius": 1})).labels
    assert noisy.max() == 2 and clean.max() == 1
    eroded = postprocess(maps, ThreeBranchParams(**{**NO_DENOISE, "centroid_erosion": 1})).labels
    assert eroded.max() == 1  # the 1-px centroid is eroded away, the real one survives


def test_foreground_only_maps_work_and_empty_maps_give_no_objects():
    labels = touching_pair()
    maps = perfect_maps(labels)
    fg_only = Maps({"foreground": maps.arrays["foreground"]})
    assert postprocess(fg_only, ThreeBranchParams(**NO_DENOISE)).labels.max() == 1
    empty = Maps({k: np.zeros((20, 20), np.float32) for k in ("foreground", "boundary", "centroid")})
    out = postprocess(empty, ThreeBranchParams())
    assert out.labels.shape == (20, 20) and out.count == 0


def test_labels_are_consecutive(disks_labels):
    labels = disks_labels((64, 64), ((12, 12), (12, 50), (50, 12), (50, 50)), 6)
    out = postprocess(perfect_maps(labels), ThreeBranchParams(**NO_DENOISE)).labels
    assert sorted(np.unique(out)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("grow", [0, 16])
def test_defaults_run_on_random_maps(grow):
    rng = np.random.default_rng(0)
    maps = Maps({k: rng.random((50, 70), dtype=np.float32) for k in ("foreground", "boundary", "centroid")})
    out = postprocess(maps, ThreeBranchParams(grow_back=grow))
    assert out.labels.shape == (50, 70) and out.labels.dtype == np.uint32


@pytest.mark.parametrize("watershed", [False, True])
def test_min_mean_foreground_drops_weak_objects_and_keeps_the_others_whole(watershed):
    labels = touching_pair()
    maps = perfect_maps(labels)
    fg = maps.arrays["foreground"]
    fg[labels == 1] *= 0.6  # object 1: every pixel 0.6, above the pixel threshold; object 2: 1.0
    fg[18:22, 40:44] = 0.2  # a dimmer patch inside object 2 (above the pixel threshold, 0.1): mean about 0.97
    plain = {**NO_DENOISE, "fg_threshold": 0.1, "watershed": watershed}
    both = postprocess(maps, ThreeBranchParams(**plain)).labels
    assert both.max() == 2  # off (the default, 0): both objects, the weak one too
    strong = postprocess(maps, ThreeBranchParams(**plain, min_mean_foreground=0.7)).labels
    assert strong.max() == 1 and strong[20, 15] == 0  # object 1 (mean 0.6) is gone
    assert np.array_equal(strong > 0, both == both[20, 45])  # object 2 kept with every pixel it had
    assert postprocess(maps, ThreeBranchParams(**plain, min_mean_foreground=0.59)).labels.max() == 2
    assert postprocess(maps, ThreeBranchParams(**plain, min_mean_foreground=0.99)).labels.max() == 0

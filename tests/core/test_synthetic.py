"""Synthetic samples: shapes, dtypes, determinism, realism checks, speed, and the shipped model on them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.synthetic import synthetic_glands, synthetic_nuclei, synthetic_worms


def _objects(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels[labels > 0])


def _touching_pairs(labels: np.ndarray) -> int:
    """Number of distinct pairs of objects that share a border (4-connectivity)."""
    pairs = set()
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return len(pairs)


@pytest.mark.parametrize("generator", [synthetic_glands, synthetic_nuclei, synthetic_worms])
def test_same_seed_same_image_other_seed_other_image(generator):
    first, again, other = generator((96, 128), seed=3), generator((96, 128), seed=3), generator((96, 128), seed=4)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_glands_look_like_glas():
    rgb, labels = synthetic_glands((512, 768), seed=0)
    assert rgb.shape == (512, 768, 3) and rgb.dtype == np.uint8
    assert labels.shape == (512, 768) and labels.dtype == np.uint16
    ids = _objects(labels)
    assert np.array_equal(ids, np.arange(1, ids.size + 1))  # numbered 1..N
    assert 8 <= ids.size <= 60 and 0.3 <= (labels > 0).mean() <= 0.7
    sizes = np.sqrt(np.bincount(labels.ravel())[1:])
    assert np.median(sizes) > 40  # glands are tens to hundreds of pixels across, as in GlaS
    assert _touching_pairs(labels) >= 1  # some glands touch
    # H&E colours: pink-purple on average (red and blue above green), dark nuclei and white lumen present.
    mean = rgb.reshape(-1, 3).mean(axis=0)
    assert mean[0] > mean[1] + 30 and mean[2] > mean[1] + 30
    grey = rgb.mean(axis=2)
    assert (grey < 110).mean() > 0.03 and (grey > 215).mean() > 0.05
    # Glands are darker (nuclei) at their rim than in their middle (lumen).
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(labels > 0)
    assert grey[(depth > 0) & (depth < 8)].mean() < grey[depth > 30].mean() - 20


def test_nuclei_are_bright_blobs_some_touching():
    image, labels = synthetic_nuclei((256, 256), seed=0)
    assert image.shape == labels.shape == (256, 256) and image.dtype == np.uint8 and labels.dtype == np.uint16
    assert _objects(labels).size >= 20 and _touching_pairs(labels) >= 3
    assert image[labels > 0].mean() > image[labels == 0].mean() + 60


def test_worms_cross_and_their_masks_overlap():
    image, labels, masks = synthetic_worms((512, 768), seed=0)
    assert image.dtype == np.uint16 and labels.dtype == np.uint16 and masks.dtype == bool
    assert masks.shape[1:] == image.shape == labels.shape and masks.shape[0] == labels.max() >= 6
    overlap = masks.sum(axis=0) > 1
    assert overlap.sum() > 50  # several crossings
    # The label image is the masks painted in order (later, smaller worms win at crossings).
    painted = np.zeros_like(labels)
    for i, mask in enumerate(masks, start=1):
        painted[mask] = i
    assert np.array_equal(painted, labels)
    assert image[masks.any(axis=0)].mean() < 0.6 * image[~masks.any(axis=0)].mean()  # worms are dark
    assert image[overlap].mean() < image[masks.any(axis=0) & ~overlap].mean()  # crossings darker still


def test_tiny_and_odd_shapes_work():
    for shape in [(1, 1), (1, 40), (33, 17)]:
        rgb, labels = synthetic_glands(shape, seed=0)
        assert rgb.shape == shape + (3,) and labels.shape == shape
        assert synthetic_nuclei(shape, seed=0)[0].shape == shape
        assert synthetic_worms(shape, seed=0)[2].shape[1:] == shape


def test_shipped_glands_model_segments_the_glands_sample():
    """The quick start's promise: the shipped model finds the sample's glands (object F1 >= 0.8)."""
    from napari_instance_tuner.core.evaluation.metrics import object_f1
    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.demo import model_for_sample

    name = model_for_sample("glands", fallback=False)
    if name is None:
        pytest.skip("no shipped gland model in this installation")
    from napari_instance_tuner._sample_data import SEED

    loaded = load_model(name)
    scores = {}
    for seed in range(6):
        rgb, truth = synthetic_glands((512, 768), seed=seed)
        maps = run(loaded.family.predict_maps(loaded.model, rgb, loaded.meta, device="cpu"))
        labels = loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta)).labels
        scores[seed] = object_f1(labels, truth)["f1"]
    # The sample the quick start shows, and synthetic glands in general (not one lucky seed).
    assert scores[SEED] >= 0.8, scores
    assert np.mean(list(scores.values())) >= 0.8, scores


def test_worms_count_and_bbbc_like_well():
    from napari_instance_tuner.core.synthetic import synthetic_worms

    image, _, masks = synthetic_worms((260, 348), seed=1, count=2, well=(0.4, 0.3), absorption=0.35)
    assert masks.shape == (2, 260, 348) and (masks[0] & masks[1]).any()  # the second worm crosses the first
    corner, centre = image[:20, :20].mean(), image[120:140, 164:184][~masks.any(0)[120:140, 164:184]].mean()
    assert corner < 0.2 * centre  # dark surround, bright well
    default, _, _ = synthetic_worms((260, 348), seed=1)
    assert default[:20, :20].mean() > corner  # the default well reaches further out


def test_shipped_layering_model_returns_crossing_worms_as_two_overlapping_objects():
    """Issue 3's acceptance: two crossing worms come out as two whole objects whose masks overlap.

    ``benchmarks/layering_crossing.py`` measures the rate (the shipped model: 4 of 8 seeds, with extra
    objects on the synthetic well's rim); this pins one of those images as a regression test of the
    ability, not of the rate.
    """
    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.core.synthetic import synthetic_worms
    from napari_instance_tuner.demo import model_for_sample

    name = model_for_sample("worms", fallback=False)
    if name is None:
        pytest.skip("no shipped worm model in this installation")
    loaded = load_model(name)
    image, _, truth = synthetic_worms((520, 696), seed=3, count=2, well=(0.4, 0.3), absorption=0.35)
    assert (truth[0] & truth[1]).any()
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    found = loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta)).masks
    iou = np.array([[(p & t).sum() / (p | t).sum() for t in truth] for p in found])
    first, second = iou.argmax(0)
    assert iou[first, 0] > 0.5 and iou[second, 1] > 0.5 and first != second, iou
    assert (found[first] & found[second]).sum() > 20  # whole, not cut at the crossing

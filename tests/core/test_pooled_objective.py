"""Auto-tuning on the pooled GlaS figures (issue 20, session 17): ``tuning_objective("pooled")`` weighs every
object the same, as the judged object F1 and object Dice do; the per-image mean weighs every image the same."""

import numpy as np
import pytest

from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import aggregate, evaluate, glas_terms, pooled_f1_dice
from napari_instance_tuner.core.evaluation.scoring import pooled_selection_score, tuning_objective
from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.synthetic import synthetic_glands


def test_pooled_terms_give_the_figures_aggregate_reports():
    rows, terms = [], []
    for seed in range(4):
        _, gt = synthetic_glands((96, 128), seed=seed)
        pred = np.roll(gt, 3 * seed, axis=1)  # shifted: partial matches, misses and false positives
        pred[:, :10 * seed] = 0
        rows.append(evaluate(pred, gt))
        terms.append(glas_terms(pred, gt))
    assert all(t[k] == r[k] for t, r in zip(terms, rows) for k in t)
    pooled = aggregate(rows)
    f1, dice = pooled_f1_dice(terms)
    assert (f1, dice) == (pooled["object_f1"], pooled["object_dice"])
    assert 0 < f1 < 1 and f1 != pooled["object_f1_image_mean"]  # pooled, not the per-image mean
    assert pooled_f1_dice([glas_terms(np.zeros((8, 8), int), np.zeros((8, 8), int))]) == (1.0, 1.0)


def _disks(shape, disks) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(disks, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return labels


def _scene():
    """Three images whose maps add a small false gland (r 20) beside a large true one (r 60), and one whose maps
    find a large gland and three small true ones: S_min above the small area fixes three images and spoils one
    (the image mean prefers it); below, it keeps 3 false glands and 3 true ones more (the pooled figures do)."""
    shape, big = (300, 300), (90, 150, 60)
    refs = [_disks(shape, [big])] * 3 + [_disks(shape, [big, (240, 60, 20), (240, 150, 20), (240, 240, 20)])]
    preds = [_disks(shape, [big, (240, 150, 20)])] * 3 + [refs[3]]
    maps = [Maps({"foreground": np.where(p > 0, 0.9, 0.05).astype(np.float32),
                  "centroid": (p > 0).astype(np.float32)}) for p in preds]
    return maps, refs


def test_the_pooled_objective_keeps_small_glands_the_image_mean_drops():
    family = get_family("three-branch")
    maps, refs = _scene()
    start = ThreeBranchParams(close_radius=0, open_radius=0, min_size=0, grow_back=0, centroid_erosion=0)
    small, large = np.pi * 20**2, np.pi * 60**2
    chosen = {}
    for objective in ("image-mean", "pooled"):
        score, combine = tuning_objective(family, objective)
        best, _, after = run(autotune(family.postprocess, maps, refs, start, score, names=["min_size"],
                                      combine=combine))
        chosen[objective] = best.min_size
        labels = [family.postprocess(m, best).labels for m in maps]
        if objective == "pooled":  # the search's score is the pooled selection score of what it chose
            assert after == pytest.approx(pooled_selection_score([glas_terms(p, r) for p, r in zip(labels, refs)]))
        else:
            assert after == pytest.approx(np.mean([family.score(p, r) for p, r in zip(labels, refs)]))
    assert small < chosen["image-mean"] < large  # drops the small glands, the false and the true ones
    assert chosen["pooled"] < small  # keeps them: 3 more true glands outweigh 3 false ones


def test_an_unknown_objective_is_named():
    with pytest.raises(ValueError, match="unknown tuning objective 'best'; choose one of image-mean, pooled"):
        tuning_objective(get_family("three-branch"), "best")

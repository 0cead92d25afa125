from dataclasses import replace

import numpy as np
import pytest

from napari_instance_tuner.core.errors import Cancelled, InstanceTunerError
from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import object_f1
from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams, postprocess
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.progress import CancelToken, run
from napari_instance_tuner.core.training.data import load_split, validation_split


def test_autotune_finds_a_better_threshold_without_the_network(disks_labels):
    labels = disks_labels((64, 64), ((20, 20), (44, 44)), 9)
    fg = np.where(labels > 0, 0.45, 0.05).astype(np.float32)  # weak foreground: default 0.5 misses it
    maps = Maps({"foreground": fg, "centroid": (labels > 0).astype(np.float32)})
    start = ThreeBranchParams(fg_threshold=0.5, close_radius=0, open_radius=0, min_size=0, grow_back=0, centroid_erosion=0)
    calls = []

    def counting_postprocess(m, p):
        calls.append(p)
        return postprocess(m, p)

    score = lambda pred, ref: object_f1(pred, ref)["f1"]
    best, before, after = run(autotune(counting_postprocess, [maps], [labels], start, score, names=["fg_threshold"]))
    assert before == 0.0 and after == 1.0
    assert 0.05 <= best.fg_threshold < 0.45 and len(calls) > 5
    assert replace(best, fg_threshold=0.5) == start  # nothing else changed


def test_autotune_cancels(disks_labels):
    labels = disks_labels()
    maps = Maps({"foreground": (labels > 0).astype(np.float32)})
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run(autotune(postprocess, [maps], [labels], ThreeBranchParams(), lambda p, r: 0.0, cancel=token))


def test_validation_split_keeps_patients_together_and_both_grades():
    names = [f"img{i}" for i in range(20)]
    groups = {n: (f"p{i // 4}", "benign" if i < 8 else "malignant") for i, n in enumerate(names)}
    train, val = validation_split(names, 0.2, seed=0, groups=groups)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(names)
    patients_val = {groups[n][0] for n in val}
    assert all(groups[n][0] not in patients_val for n in train)
    assert {groups[n][1] for n in val} == {"benign", "malignant"}
    assert validation_split(names, 0.2, 0, groups) == (train, val)  # deterministic


def test_a_validation_fraction_of_zero_holds_nothing_out():
    names = [f"img{i}" for i in range(6)]
    groups = {n: (f"p{i // 2}", "benign" if i < 2 else "malignant") for i, n in enumerate(names)}
    assert validation_split(names, 0.0, seed=3, groups=groups) == (names, [])
    assert validation_split(names, 0.01, seed=3, groups=groups)[1]  # any positive fraction holds a patient out


def test_load_split_reads_layout_and_reports_missing_labels(tmp_path):
    import imageio.v3 as iio
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.ones((8, 8), np.uint16))
    masks = np.zeros((2, 8, 8), bool)
    np.savez(tmp_path / "labels" / "a_instances.npz", masks=masks)
    (sample,) = load_split(tmp_path)
    assert sample.name == "a" and sample.image.shape == (8, 8, 3) and sample.labels.dtype == np.int32
    assert sample.masks.shape == (2, 8, 8)
    iio.imwrite(tmp_path / "images" / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InstanceTunerError, match="no label file"):
        load_split(tmp_path)
    with pytest.raises(InstanceTunerError, match="must contain 'images/' and 'labels/'"):
        load_split(tmp_path / "images")

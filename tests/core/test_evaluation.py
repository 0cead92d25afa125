"""Layer-level evaluation (2D and stacks), reference splitting and the tunable metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.evaluation import metrics
from napari_instance_tuner.core.evaluation.layer_metrics import (
    TABLE_ROWS,
    TUNABLE,
    evaluate_labels,
    score_function,
    split_slices,
)


def test_evaluate_labels_of_an_image_and_of_a_stack(disks_labels):
    ref = disks_labels()
    pred = disks_labels(centres=((20, 20), (20, 44)))
    one = evaluate_labels(pred, ref)
    assert one == metrics.evaluate(pred, ref) and all(key in one for key, _ in TABLE_ROWS)
    stack = evaluate_labels(np.stack([pred, ref]), np.stack([ref, ref]))
    assert stack["tp"] == 2 + 3 and stack["fn"] == 1 and stack["n_images"] == 2
    assert all(key in stack for key, _ in TABLE_ROWS)
    with pytest.raises(InstanceTunerError, match="differ"):
        evaluate_labels(pred, ref[:10])
    with pytest.raises(InstanceTunerError, match=r"\(Z, H, W\)"):
        evaluate_labels(pred[None, None], ref[None, None])


def test_split_slices_checks_the_shape(disks_labels):
    ref = disks_labels()
    assert split_slices(ref, (64, 64), None)[0] is ref
    assert len(split_slices(np.stack([ref] * 3), (64, 64), 3)) == 3
    with pytest.raises(InstanceTunerError, match="reference labels have shape"):
        split_slices(ref, (64, 65), None)


def test_tunable_scores_are_one_for_a_perfect_prediction(disks_labels):
    ref = disks_labels()
    assert set(TUNABLE) == {"object_f1", "mean_ap", "aji", "object_dice", "dsb_score"}
    for name in TUNABLE:
        assert score_function(name)(ref, ref) == pytest.approx(1.0)
        assert score_function(name)(np.zeros_like(ref), ref) == pytest.approx(0.0)
    with pytest.raises(InstanceTunerError, match="choose one of object_f1"):
        score_function("accuracy")

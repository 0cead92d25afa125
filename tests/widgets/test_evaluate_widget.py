"""The Evaluate widget: hand-checked numbers in the table and an error layer marking the right objects."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000


def handmade() -> tuple[np.ndarray, np.ndarray]:
    """Reference: three 10 x 10 squares 1, 2, 3. Prediction: 10 = square 1 exactly; 30 = 40 % of square 3;
    50 = 24 background pixels; square 2 is missed. TP 1, FP 2 (30, 50), FN 2 (2, 3)."""
    ref = np.zeros((40, 60), np.int32)
    ref[0:10, 0:10], ref[0:10, 20:30], ref[20:30, 0:10] = 1, 2, 3
    pred = np.zeros_like(ref)
    pred[0:10, 0:10] = 10
    pred[20:24, 0:10] = 30
    pred[35:38, 50:58] = 50
    return pred, ref


@pytest.fixture
def evaluator(viewer, qtbot, errors):
    from napari_instance_tuner.widgets.evaluate import EvaluateWidget

    pred, ref = handmade()
    viewer.add_labels(pred, name="pred", scale=(2, 2))
    viewer.add_labels(ref, name="ref", scale=(2, 2))
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Evaluate")
    widget.prediction.value, widget.reference.value = viewer.layers["pred"], viewer.layers["ref"]
    yield widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def evaluate(qtbot, widget) -> str:
    with qtbot.waitSignal(widget.evaluated, timeout=TIMEOUT_MS) as blocker:
        widget.evaluate()
    return blocker.args[0]


def test_table_shows_the_hand_computed_metrics(evaluator, qtbot, errors):
    assert evaluate(qtbot, evaluator) == "ok", errors
    shown = evaluator.shown()
    # Object F1: precision = recall = 1/3. AP at every threshold: TP / (TP + FP + FN) = 1 / 5.
    assert shown["object F1"] == shown["precision"] == shown["recall"] == "0.333"
    assert all(shown[f"AP@0.{t}"] == "0.200" for t in range(5, 10)) and shown["mean AP"] == "0.200"
    # Object Dice: predicted side (100 * 1 + 40 * 80/140 + 24 * 0) / 164, reference side (100 + 0 + 100 * 80/140) / 300.
    dice = 0.5 * ((100 + 40 * 80 / 140) / 164 + (100 + 100 * 80 / 140) / 300)
    assert evaluator.values["object_dice"] == pytest.approx(dice) and shown["object Dice"] == f"{dice:.3f}"
    # AJI: intersections 100 + 0 + 40 over unions 100 + 100 + 100 plus the unused prediction's 24 pixels.
    assert evaluator.values["aji"] == pytest.approx(140 / 324) and shown["AJI"] == "0.432"
    assert (shown["true positives"], shown["false positives"], shown["false negatives"]) == ("1", "2", "2")
    assert (shown["predicted objects"], shown["reference objects"]) == ("3", "3")
    assert float(shown["object Hausdorff (px)"]) > 0
    assert evaluator.summary.value == "pred vs ref: 2 false positives, 2 false negatives"


def test_error_layer_marks_the_wrong_objects(evaluator, viewer, qtbot):
    pred, ref = handmade()
    assert evaluate(qtbot, evaluator) == "ok"
    layer = viewer.layers["pred errors"]
    assert layer is evaluator.error_layer and tuple(layer.scale) == (2, 2)
    errors = layer.data
    assert np.all(errors[pred == 50] == 1)  # false positive
    assert np.all(errors[ref == 2] == 2)  # missed
    assert np.all(errors[pred == 30] == 3) and np.all(errors[(ref == 3) & (pred == 0)] == 2)
    assert not errors[ref == 1].any() and not errors[(pred == 0) & (ref == 0)].any()
    # Re-evaluating with the IoU rule updates the same layer; it is not offered as a prediction.
    evaluator.rule.value = "iou"
    assert evaluate(qtbot, evaluator) == "ok"
    assert viewer.layers["pred errors"] is layer and len(viewer.layers) == 3
    assert layer not in [c for c in evaluator.prediction.choices]


def test_problems_become_notifications(evaluator, viewer, qtbot, errors):
    evaluator.reference.value = viewer.add_labels(np.zeros((8, 8), np.int32), name="small")
    assert evaluate(qtbot, evaluator) == "error" and "differ" in errors[-1]
    evaluator.reference.value = viewer.layers["pred"]
    evaluator.evaluate()
    assert "same layer" in errors[-1]
    viewer.layers.remove("small")
    viewer.layers.remove("ref")
    viewer.layers.remove("pred")
    evaluator.evaluate()
    assert "choose a prediction and a reference" in errors[-1] and len(errors) == 3
    assert evaluator.evaluate_button.enabled and not evaluator.busy


def test_stacks_are_scored_slice_by_slice(evaluator, viewer, qtbot, errors):
    pred, ref = handmade()
    evaluator.prediction.value = viewer.add_labels(np.stack([pred, ref]), name="pred stack")
    evaluator.reference.value = viewer.add_labels(np.stack([ref, ref]), name="ref stack")
    assert evaluate(qtbot, evaluator) == "ok", errors
    # Pooled over both slices: TP 1 + 3, FP 2 + 0, FN 2 + 0.
    assert (evaluator.values["tp"], evaluator.values["fp"], evaluator.values["fn"]) == (4, 2, 2)
    assert evaluator.shown()["object F1"] == f"{2 * 4 / (2 * 4 + 2 + 2):.3f}"
    layer = viewer.layers["pred stack errors"]
    assert layer.data.shape == (2, 40, 60) and layer.data[0].any() and not layer.data[1].any()


def test_figures_are_marked_stale_when_the_labels_change(evaluator, viewer, qtbot, errors):
    assert evaluate(qtbot, evaluator) == "ok", errors
    assert not evaluator.stale and evaluator.table.item(0, 1).foreground().color().getRgb()[:3] != (128, 128, 128)
    pred = viewer.layers["pred"]
    pred.data = np.where(pred.data == 50, 0, pred.data)  # e.g. the Segment widget writing new labels
    assert evaluator.stale and evaluator.summary.value.startswith("STALE")
    assert evaluator.table.item(0, 1).foreground().color().getRgb()[:3] == (128, 128, 128)
    assert evaluate(qtbot, evaluator) == "ok"
    assert not evaluator.stale and evaluator.summary.value.startswith("pred vs ref")
    viewer.layers["ref"].paint((5, 5), 7)  # a brush stroke on the reference
    assert evaluator.stale
    evaluator.stale = False
    viewer.add_labels(np.zeros((8, 8), np.int32), name="other").data = np.ones((8, 8), np.int32)
    assert not evaluator.stale  # layers not evaluated are not watched

"""The Auto-tune widget: searches on the Segment widget's cached maps, never calls the network."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000


@pytest.fixture
def network(monkeypatch, disks_labels) -> list:
    """Replaces the three-branch network by fixed maps whose best foreground threshold is ~0.2, not 0.33.

    Foreground 0.25 on three disks (0.02 elsewhere), centroids 0.9 on them, no boundaries: the default
    threshold 0.33 finds nothing. Returns the list of calls.
    """
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily
    from napari_instance_tuner.core.family import Maps

    truth = disks_labels((64, 64))
    calls: list = []

    def fixed(self, model, image, meta, **kwargs):
        calls.append(np.shape(image))
        fg = np.where(truth > 0, 0.25, 0.02).astype(np.float32)
        maps = {"foreground": fg, "boundary": np.zeros_like(fg), "centroid": (truth > 0).astype(np.float32) * 0.9}
        return Maps(maps)
        yield  # unreachable: a generator, as predict_maps is

    monkeypatch.setattr(ThreeBranchFamily, "predict_maps", fixed)
    return calls


@pytest.fixture
def segmented(loaded, viewer, network, run, errors, disks_labels):
    """The Segment widget after a run on a 64 x 64 image; a reference Labels layer "truth"."""
    loaded.image.value = viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    viewer.add_labels(disks_labels((64, 64)), name="truth")
    assert run(loaded) == "ok", errors
    return loaded


@pytest.fixture
def tuner(viewer, segmented, qtbot):
    from napari_instance_tuner.widgets.autotune import AutotuneWidget

    widget = AutotuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Auto-tune")
    widget.reference.value = viewer.layers["truth"]
    yield widget
    qtbot.waitUntil(lambda: not widget.busy and not segmented.busy, timeout=TIMEOUT_MS)


def test_autotune_improves_the_metric_and_moves_the_sliders_without_the_network(
    tuner, segmented, viewer, qtbot, network, errors
):
    from napari_instance_tuner.core.evaluation.metrics import object_f1

    labels = viewer.layers["img instances"]
    assert not labels.data.any() and network == [(64, 64)]  # the defaults find nothing
    with (qtbot.waitSignal(segmented.labels_updated, timeout=TIMEOUT_MS),
          qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done):
        tuner.tune()
        assert tuner.cancel_button.enabled and not tuner.tune_button.enabled
    assert done.args == ["ok"], errors
    assert (tuner.before, tuner.after) == (0.0, 1.0)
    assert tuner.result.value == "object F1: 0.000 → 1.000"
    threshold = segmented.params.controls["fg_threshold"].value
    assert 0.02 <= threshold < 0.25  # the slider moved to a threshold that separates the disks
    assert segmented.current_session.params.fg_threshold == pytest.approx(threshold)
    assert object_f1(labels.data, viewer.layers["truth"].data)["f1"] == 1.0  # the labels were re-computed
    assert network == [(64, 64)]  # only the first Run called the network
    assert tuner.tune_button.enabled and errors == []


def test_other_metrics_and_cancel(tuner, segmented, qtbot, monkeypatch, errors):
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily

    tuner.metric_choice.value = "aji"
    with qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done:
        tuner.tune()
    assert done.args == ["ok"] and tuner.result.value.startswith("AJI: 0.000 → ") and tuner.after > 0.9
    qtbot.waitUntil(lambda: not segmented.busy, timeout=TIMEOUT_MS)
    params = segmented.params.params()
    original = ThreeBranchFamily.postprocess

    def slow(self, maps, p):
        time.sleep(0.02)
        return original(self, maps, p)

    monkeypatch.setattr(ThreeBranchFamily, "postprocess", slow)
    with qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done:
        tuner.tune()
        qtbot.wait(100)
        tuner.cancel()
    assert done.args == ["cancelled"] and "cancelled" in tuner.result.value
    assert segmented.params.params() == params and errors == []


def test_problems_become_notifications(tuner, segmented, viewer, qtbot, errors):
    tuner.reference.value = viewer.add_labels(np.zeros((32, 32), np.int32), name="small")
    with qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done:
        tuner.tune()
    assert done.args == ["error"] and "reference labels have shape (32, 32)" in errors[-1]
    tuner.reference.value = viewer.layers["img instances"]
    tuner.tune()
    assert "own output" in errors[-1]
    segmented.image.value = viewer.add_image(np.zeros((16, 16), np.float32), name="not segmented")
    tuner.tune()
    assert "segment the selected image first" in errors[-1]
    assert len(errors) == 3 and tuner.tune_button.enabled and not tuner.busy


def test_a_large_streamed_image_has_no_maps_to_tune(loaded, viewer, run, errors, monkeypatch, tmp_path, disks_labels):
    """A large image is streamed tile by tile without cached maps: the message says so and suggests a crop."""
    from napari_instance_tuner.core.inference.streaming import StreamSettings
    from napari_instance_tuner.widgets import _streamed
    from napari_instance_tuner.widgets import segment as module
    from napari_instance_tuner.widgets.autotune import STREAMED_MESSAGE, AutotuneWidget

    monkeypatch.setattr(module, "STREAM_PIXELS", 32 * 32)  # 64 x 64 is "large"
    monkeypatch.setattr(module, "STREAM_SETTINGS", StreamSettings(tile=32, halo=16))
    monkeypatch.setattr(module, "PYRAMID_MIN_SIZE", 16)
    monkeypatch.setattr(_streamed, "_DIR", tmp_path)
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = viewer.add_image(rgb, name="slide", rgb=True)
    viewer.add_labels(disks_labels((64, 64)), name="truth")
    loaded.image.value = image
    tuner = AutotuneWidget(viewer)
    viewer.window.add_dock_widget(tuner, name="Auto-tune")
    tuner.reference.value = viewer.layers["truth"]
    params = loaded.params.params()

    tuner.tune()  # not run yet, but Run would stream it: segmenting first would not help
    assert errors == [STREAMED_MESSAGE.format(name="slide")]
    assert run(loaded) == "ok", errors
    assert loaded.sessions.get(image).streamed is not None and loaded.current_session is None
    tuner.tune()  # streamed: still no maps
    assert len(errors) == 2 and errors[-1] == errors[0]
    message = errors[-1]
    assert "needs the network maps" in message and "tile by tile (streamed) without keeping them" in message
    assert "cropped region or a smaller image" in message and "Run Segment again with the tuned parameters" in message
    assert "segment the selected image first" not in message
    assert not tuner.busy and tuner.result.value == "" and tuner.tune_button.enabled
    assert loaded.params.params() == params


def test_without_a_segment_widget(viewer, errors):
    from napari_instance_tuner.widgets.autotune import AutotuneWidget

    widget = AutotuneWidget(viewer)
    widget.tune()
    assert "open it and segment an image first" in errors[-1] and not widget.busy


def test_tool_widgets_find_the_segment_widget_through_naparis_plugin_proxies(
    make_napari_viewer, network, tiny_checkpoint, qtbot, run, errors, disks_labels
):
    """As when opened from the plugin menu: each widget gets only a proxy of the viewer."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_instance_tuner.widgets.autotune import AutotuneWidget
    from napari_instance_tuner.widgets.finetune import FinetuneWidget
    from napari_instance_tuner.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    tuner = AutotuneWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(tuner, name="Auto-tune")
    assert tuner.sessions.current is None and tuner.sessions.model is None  # no Segment widget yet
    segment = SegmentWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(segment, name="Segment")
    finetune = FinetuneWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(finetune, name="Fine-tune")
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    viewer.add_labels(disks_labels((64, 64)), name="truth")
    segment.image.value = image
    segment.load_weights(tiny_checkpoint)
    assert run(segment) == "ok", errors
    assert tuner.sessions is segment.sessions and finetune.sessions is segment.sessions  # one registry per viewer
    assert finetune.model() is segment.current_model and finetune.model().name == "tiny"
    tuner.reference.value = tuner.viewer.layers["truth"]
    with (qtbot.waitSignal(segment.labels_updated, timeout=TIMEOUT_MS),
          qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done):
        tuner.tune()
    assert done.args == ["ok"] and tuner.after == 1.0 and "not applied" not in tuner.result.value, errors
    assert segment.params.controls["fg_threshold"].value < 0.25
    qtbot.waitUntil(lambda: not segment.busy, timeout=TIMEOUT_MS)


def test_tool_widgets_paint(viewer, segment):
    """Regression: an attribute named like a QWidget method (``metric``) crashed Qt when it painted."""
    from qtpy.QtWidgets import QWidget

    from napari_instance_tuner.widgets.autotune import AutotuneWidget
    from napari_instance_tuner.widgets.evaluate import EvaluateWidget
    from napari_instance_tuner.widgets.finetune import FinetuneWidget

    for cls in (AutotuneWidget, FinetuneWidget, EvaluateWidget):
        widget = cls(viewer)
        shadowed = {
            name for name, value in vars(widget).items()
            if callable(getattr(QWidget, name, None)) and type(value).__name__ != "SignalInstance"
        }
        assert shadowed == set(), cls
        assert not widget.grab().isNull()


def test_every_metric_of_the_user_guide_is_offered_and_range_ends_are_reported(tuner, segmented, qtbot, errors):
    from pathlib import Path

    from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams
    from napari_instance_tuner.widgets.autotune import edge_note

    combo = tuner.metric_choice.native
    offered = {combo.itemText(i) for i in range(combo.count())}
    guide = (Path(__file__).parents[2] / "docs" / "user-guide.md").read_text()
    listed = guide.split("for the metric")[1].split(")")[0]  # "you choose (object F1, mean AP, ..., DSB score"
    assert {m.strip() for m in listed.split("(")[1].split(",")} <= offered and "DSB score" in offered
    tuner.metric_choice.value = "dsb_score"
    with qtbot.waitSignal(tuner.tune_finished, timeout=TIMEOUT_MS) as done:
        tuner.tune()
    assert done.args == ["ok"] and tuner.result.value.startswith("DSB score: 0.000 → "), errors
    start = ThreeBranchParams()
    note = edge_note(ThreeBranchParams(fg_threshold=0.0, min_size=0), start)
    assert "fg_threshold = 0.00 (lowest allowed)" in note and "min_size = 0 (lowest allowed)" in note
    assert edge_note(start, start) == ""  # nothing moved onto an end
    assert edge_note(ThreeBranchParams(close_radius=0), ThreeBranchParams(close_radius=0)) == ""

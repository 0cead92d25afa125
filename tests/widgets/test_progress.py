"""Progress inside each dock (what runs, done/total, time left, Cancel) and jobs cancelled when their image closes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.progress import Progress

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000


def test_the_progress_line_says_what_runs_how_far_and_the_time_left(qtbot, monkeypatch):
    from napari_instance_tuner.widgets import _progress
    from napari_instance_tuner.widgets._progress import ProgressPanel

    now = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    pressed = []
    panel = ProgressPanel(on_cancel=lambda: pressed.append(True))
    qtbot.addWidget(panel)
    assert panel.isHidden() and panel.text == ""
    panel.start("Fine-tuning tiny")
    assert panel.text == "Fine-tuning tiny…" and panel.bar.maximum() == 0  # busy until a count arrives
    now[0] += 20.0
    panel.show_progress(Progress(10, 50, "step", {"loss": 0.3}))
    assert panel.text == "Fine-tuning tiny: step · 10/50 · 1:20 left"
    assert (panel.bar.value(), panel.bar.maximum()) == (10, 50)
    now[0] += 5.0
    panel.show_progress(Progress(1, 4, "pyramid"))  # a new stage: its own count and clock
    assert panel.text == "Fine-tuning tiny: pyramid · 1/4 · 0:00 left" and panel.bar.maximum() == 4
    panel.show_progress(Progress(2, 4, "chunk 2/4"))
    assert panel.text == "Fine-tuning tiny: chunk 2/4 · 0:00 left"  # the count is not repeated
    panel.cancel_button.click()
    assert pressed == [True]
    panel.cancelling()
    assert panel.text.endswith("cancelling…") and not panel.cancel_button.isEnabled()
    panel.finish()
    assert panel.isHidden()


def test_a_segment_run_shows_its_tiles_in_the_dock_and_cancel_there_stops_it(with_image, qtbot, slow_network):
    widget = with_image
    shown: list[str] = []
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        widget.run()
        assert not widget.progress_panel.isHidden() and widget.progress_panel.text.startswith("Segmenting img")
        qtbot.waitUntil(lambda: "slow tile" in widget.progress_panel.text, timeout=TIMEOUT_MS)
        shown.append(widget.progress_panel.text)
        widget.progress_panel.cancel_button.click()
    assert blocker.args == ["cancelled"]
    assert "/13" in shown[0] and widget.progress_panel.isHidden()
    assert widget.sessions.segmented() == []


def test_closing_the_image_mid_run_cancels_it_and_says_so(with_image, viewer, qtbot, slow_network, warnings_shown,
                                                          errors):
    widget = with_image
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        widget.run()
        qtbot.waitUntil(lambda: "slow tile" in widget.progress_panel.text, timeout=TIMEOUT_MS)
        viewer.layers.remove("img")
    assert blocker.args == ["cancelled"]
    assert len(warnings_shown) == 1 and "'img' was closed: segmenting img was cancelled" in warnings_shown[0]
    assert [layer.name for layer in viewer.layers] == [] and errors == []
    assert len(slow_network) < 2  # the real network never ran to its end... or at all


def test_closing_the_image_while_its_model_loads_drops_the_run(segment, viewer, qtbot, tiny_checkpoint,
                                                                warnings_shown, image):
    segment.image.value = image
    segment.models._files.append(str(tiny_checkpoint))
    segment.models._set_choice(str(tiny_checkpoint))
    with qtbot.waitSignal(segment.run_finished, timeout=TIMEOUT_MS) as blocker:
        segment.run()  # loads the model first
        assert segment.models.loading
        viewer.layers.remove(image)
    assert blocker.args == ["cancelled"]
    assert "'img' was closed" in warnings_shown[0]
    qtbot.waitUntil(lambda: not segment.busy, timeout=TIMEOUT_MS)
    assert not any(layer.name.startswith("img") for layer in viewer.layers)


def test_evaluation_shows_its_stages_and_can_be_cancelled(viewer, qtbot, disks_labels, monkeypatch):
    from napari_instance_tuner.widgets import evaluate as module
    from napari_instance_tuner.widgets.evaluate import EvaluateWidget

    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Evaluate")
    viewer.add_labels(disks_labels(), name="reference")
    viewer.add_labels(np.roll(disks_labels(), 2, axis=0), name="prediction")
    widget.prediction.value, widget.reference.value = viewer.layers["prediction"], viewer.layers["reference"]
    texts: list[str] = []
    panel, show = widget.progress_panel, widget.progress_panel.show_progress
    monkeypatch.setattr(panel, "show_progress", lambda item: (show(item), texts.append(panel.text)))
    with qtbot.waitSignal(widget.evaluated, timeout=TIMEOUT_MS) as blocker:
        widget.evaluate()
        assert widget.progress_panel.text.startswith("Evaluating prediction")
    assert blocker.args == ["ok"] and widget.progress_panel.isHidden()
    assert any("error map · 1/2" in text for text in texts)

    original = module.evaluate_labels

    def slow(*args, **kwargs):
        import time

        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate_labels", slow)
    before = widget.shown()
    with qtbot.waitSignal(widget.evaluated, timeout=TIMEOUT_MS) as blocker:
        widget.evaluate()
        widget.progress_panel.cancel_button.click()
    assert blocker.args == ["error"] and widget.summary.value == "cancelled" and widget.shown() == before


def test_export_offers_no_cancel_for_a_write_it_cannot_stop(viewer, qtbot, disks_labels, tmp_path):
    from napari_instance_tuner.widgets.export import ExportWidget

    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    viewer.add_labels(disks_labels(), name="cells")
    widget.folder.value = str(tmp_path)
    with qtbot.waitSignal(widget.export_finished, timeout=TIMEOUT_MS) as blocker:
        widget.export()
        assert widget.progress_panel.text.startswith("Exporting cells") and widget.progress_panel.cancel_button.isHidden()
    assert blocker.args == ["ok"] and widget.progress_panel.isHidden()


def test_fine_tuning_shows_its_steps_and_the_time_left_in_the_dock(with_image, viewer, qtbot, monkeypatch, errors):
    from napari_instance_tuner.core.synthetic import synthetic_glands
    from napari_instance_tuner.widgets.finetune import FinetuneWidget

    _, labels = synthetic_glands((64, 96), seed=0)
    corrected = viewer.add_labels(labels.astype(np.int32), name="img corrected")
    tuner = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(tuner, name="Fine-tune")
    tuner.pairs.image.value, tuner.pairs.labels.value = viewer.layers["img"], corrected
    assert tuner.pairs.add() is not None
    tuner.steps.value, tuner.batch_size.value, tuner.resegment.value = 3, 1, False
    panel, show, texts = tuner.progress_panel, tuner.progress_panel.show_progress, []
    monkeypatch.setattr(panel, "show_progress", lambda item: (show(item), texts.append(panel.text)))
    with qtbot.waitSignal(tuner.finetune_finished, timeout=TIMEOUT_MS) as blocker:
        tuner.start()
    assert blocker.args == ["ok"], errors
    steps = [text for text in texts if "/3" in text]
    assert steps and steps[0].startswith("Fine-tuning tiny")
    assert any(text.endswith("left") for text in steps) and panel.isHidden()

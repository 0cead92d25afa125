"""The Fine-tune widget in a real viewer with the tiny random-weight model: train, cancel, save, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


class Dialogs:
    """Answers for the save dialog and the overwrite question, and what was asked."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.overwrite = False
        self.asked: list[Path] = []

    def ask_path(self, suggested: str) -> str | None:
        return self.path

    def confirm(self, path: Path) -> bool:
        self.asked.append(path)
        return self.overwrite


@pytest.fixture(autouse=True)
def scratch_in_tmp_path(monkeypatch, tmp_path):
    """Scratch checkpoints of re-segmenting go to the test's folder, not the system's temp folder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def dialogs() -> Dialogs:
    return Dialogs()


@pytest.fixture
def corrected(viewer, image):
    """The ground truth of the "img" sample as a Labels layer "img corrected"."""
    from napari_instance_tuner.core.synthetic import synthetic_glands

    _, labels = synthetic_glands((64, 96), seed=0)
    return viewer.add_labels(labels.astype(np.int32), name="img corrected")


@pytest.fixture
def tuner(viewer, with_image, corrected, qtbot, dialogs):
    """The Fine-tune widget linked to the Segment widget (tiny model loaded), with one pair chosen."""
    from napari_instance_tuner.widgets.finetune import FinetuneWidget

    widget = FinetuneWidget(viewer, ask_path=dialogs.ask_path, confirm_overwrite=dialogs.confirm)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.pairs.image.value, widget.pairs.labels.value = viewer.layers["img"], corrected
    assert widget.pairs.add() is not None
    widget.steps.value, widget.batch_size.value = 3, 1
    yield widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def train(qtbot, widget) -> str:
    with qtbot.waitSignal(widget.finetune_finished, timeout=TIMEOUT_MS) as blocker:
        widget.start()
    return blocker.args[0]


def test_finetune_plots_the_loss_resegments_and_keeps_the_old_labels(with_image, tuner, viewer, qtbot, run, errors):
    from napari_instance_tuner.core.io.checkpoint import file_sha256

    segment = with_image
    assert run(segment) == "ok"
    parent = segment.current_model
    parent_sha = file_sha256(parent.path)
    old = viewer.layers["img instances"]
    before = np.copy(old.data)
    assert "tiny (the Segment widget's)" in tuner.model_info.value
    with qtbot.waitSignal(segment.run_finished, timeout=TIMEOUT_MS) as resegmented:
        assert train(qtbot, tuner) == "ok", errors
    assert resegmented.args == ["ok"], errors
    # Three steps: three points on the curve, a full progress bar, a history of three losses.
    assert len(tuner.plot.values) == 3 and all(np.isfinite(tuner.plot.values))
    assert len(tuner.plot.points()) == 3
    assert tuner.progress.value == tuner.progress.max  # the steps ended before the time budget
    assert [h["loss"] for h in tuner.tuned.result.history] == pytest.approx(tuner.plot.values)
    # The previous labels are kept under a new name; the new labels come from the fine-tuned copy.
    assert old.name == "img instances (before fine-tune)" and np.array_equal(old.data, before)
    new = viewer.layers["img instances"]
    assert new is not old
    tuned_model = segment.current_model
    assert tuned_model is not parent and tuned_model.path == tuner.tuned.scratch
    assert tuned_model.meta["parent"]["sha256"] == parent_sha
    assert new.metadata["napari_instance_tuner"]["weights_sha256"] == tuned_model.sha256
    assert file_sha256(parent.path) == parent_sha  # the loaded file was not touched
    assert tuner.save_button.enabled and tuner.start_button.enabled and errors == []


def test_cancel_keeps_the_loaded_model_maps_and_layers(with_image, tuner, viewer, qtbot, run, errors):
    import torch

    segment = with_image
    assert run(segment) == "ok"
    loaded, result = segment.current_model, segment.current_session
    maps = result.maps
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    layers = {layer.name: np.copy(layer.data) for layer in viewer.layers}
    tuner.steps.value = 2000
    with qtbot.waitSignal(tuner.finetune_finished, timeout=TIMEOUT_MS) as blocker:
        tuner.start()
        assert tuner.cancel_button.enabled and not tuner.start_button.enabled
        qtbot.waitUntil(lambda: len(tuner.plot.values) >= 2, timeout=TIMEOUT_MS)  # the GUI kept updating
        tuner.cancel()
    assert blocker.args == ["cancelled"], errors
    steps = len(tuner.tuned.result.history)
    assert 2 <= steps < 2000 and tuner.tuned.result.stopped == "cancelled"
    assert "cancelled after" in tuner.status.value and tuner.save_button.enabled
    # Nothing changed in the Segment widget or the viewer...
    assert segment.current_model is loaded and segment.current_session is result and result.maps is maps is not None
    assert all(torch.equal(weights[k], v) for k, v in loaded.model.state_dict().items())
    assert {layer.name: np.copy(layer.data) for layer in viewer.layers}.keys() == layers.keys()
    assert all(np.array_equal(viewer.layers[name].data, data) for name, data in layers.items())
    # ...and the model still predicts.
    assert run(segment) == "ok" and errors == []
    assert tuner.start_button.enabled and not tuner.cancel_button.enabled


def test_save_refuses_the_parent_and_records_its_hash(tuner, qtbot, tmp_path, dialogs, errors):
    from napari_instance_tuner.core.io.checkpoint import file_sha256, read_checkpoint

    tuner.resegment.value = False
    assert train(qtbot, tuner) == "ok", errors
    parent = tuner.tuned.parent
    parent_sha = file_sha256(parent.path)
    assert tuner.tuned.scratch is None  # nothing written without re-segmenting

    dialogs.path = str(parent.path)
    tuner.save()
    assert len(errors) == 1 and "refusing to overwrite the loaded weights" in errors[0]
    assert file_sha256(parent.path) == parent_sha and dialogs.asked == [] and not tuner.busy

    dialogs.path = str(tmp_path / "tuned")  # no suffix: .safetensors is added
    with qtbot.waitSignal(tuner.saved, timeout=TIMEOUT_MS) as saved:
        tuner.save()
    assert saved.args == [str(tmp_path / "tuned.safetensors")]
    _, meta = read_checkpoint(tmp_path / "tuned.safetensors")
    assert meta["parent"]["sha256"] == parent_sha and meta["parent"]["file"] == Path(parent.path).name
    assert len(meta["finetune"]["history"]) == 3 and meta["finetune"]["settings"]["steps"] == 3
    assert meta["finetune"]["data"][0]["objects"] == 2 and meta["finetune"]["data"][0]["shape"] == [64, 96, 3]

    other = tmp_path / "other.safetensors"
    other.write_bytes(b"keep me")
    dialogs.path = str(other)
    tuner.save()  # declined: the file stays
    assert dialogs.asked == [other] and other.read_bytes() == b"keep me" and "kept" in tuner.status.value
    dialogs.overwrite = True
    with qtbot.waitSignal(tuner.saved, timeout=TIMEOUT_MS):
        tuner.save()
    assert read_checkpoint(other)[1]["parent"]["sha256"] == parent_sha and len(errors) == 1


def test_checked_regions_come_from_a_shapes_layer(tuner, viewer):
    # Shapes drawn at twice the image's scale: the rectangle covers image rows 4..11, columns 10..29.
    shapes = viewer.add_shapes([np.array([[2, 5], [2, 14.5], [5.5, 14.5], [5.5, 5]])], shape_type="rectangle",
                               name="checked", scale=(2, 2))
    tuner.pairs.remove_selected()
    tuner.pairs.regions.value = shapes
    pair = tuner.pairs.add()
    assert pair.describe() == "img ← img corrected in checked" and len(tuner.pairs.pairs) == 1
    region = pair.capture().corrected().region
    expected = np.zeros((64, 96), bool)
    expected[4:12, 10:30] = True
    assert np.array_equal(region, expected)
    viewer.layers.remove(shapes)  # a removed layer takes its pairs with it
    assert tuner.pairs.pairs == [] and list(tuner.pairs.list.choices) == []


def test_a_held_out_region_is_scored_plotted_and_reported(tuner, viewer, qtbot, errors):
    # The right-most 40 columns: the second gland (columns 55..95) lies mostly inside.
    held = viewer.add_shapes([np.array([[-0.5, 55.5], [-0.5, 95.5], [63.5, 95.5], [63.5, 55.5]])],
                             shape_type="rectangle", name="held out")
    tuner.pairs.remove_selected()
    tuner.pairs.holdout.value = held
    pair = tuner.pairs.add()
    assert pair.describe() == "img ← img corrected, held out: held out"
    holdout = pair.capture().corrected().holdout
    assert holdout.sum() == 64 * 40 and holdout[:, 56:].all()
    tuner.resegment.value = False
    tuner.steps.value, tuner.validate_every.value = 4, 2
    assert train(qtbot, tuner) == "ok", errors
    # The starting model, then every second step: a second curve; the best score is in the status line.
    assert [step for step, _ in tuner.plot.scores] == [0, 2, 4] and len(tuner.plot.score_points()) == 3
    assert len(tuner.plot.values) == 4 and len(tuner.plot.points()) == 4
    validation = tuner.tuned.result.validation
    best_step, best = tuner.plot.best_score()
    assert validation["best_step"] == best_step and validation["best_score"] == pytest.approx(best)
    assert validation["start_score"] == pytest.approx(tuner.plot.scores[0][1])
    assert f"best {best:.3f} at step {best_step}" in tuner.status.value
    assert f"best {best:.3f} at step {best_step}" in tuner.plot.score_text()
    assert not tuner.plot.grab().isNull()  # paints both curves
    assert [h["epoch"] for h in tuner.tuned.result.history if "val_score" in h] == [2, 4] and errors == []
    # One layer cannot be both the checked and the held-out region; removing it drops its pair.
    tuner.pairs.regions.value = held
    assert tuner.pairs.add() is None and "cannot be both" in errors[-1]
    viewer.layers.remove(held)
    assert tuner.pairs.pairs == []


def test_problems_become_notifications_and_the_widget_stays_usable(tuner, viewer, qtbot, errors):
    tuner.pairs.remove_selected()
    tuner.start()
    assert "no pairs" in errors[-1] and not tuner.busy
    # Labels of another size cannot be paired with the image.
    tuner.pairs.labels.value = viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    assert tuner.pairs.add() is None and "do not match" in errors[-1] and tuner.pairs.pairs == []
    # A region drawn outside the image fails in the worker, as a notification.
    outside = viewer.add_shapes([np.array([[200, 200], [200, 220], [220, 220], [220, 200]])], name="far")
    tuner.pairs.labels.value, tuner.pairs.regions.value = viewer.layers["img corrected"], outside
    assert tuner.pairs.add() is not None
    assert train(qtbot, tuner) == "error"
    assert "does not overlap" in errors[-1] and "fine-tuning failed" in errors[-1]
    assert tuner.start_button.enabled and not tuner.cancel_button.enabled and tuner.tuned is None
    # A line marks no area.
    line = viewer.add_shapes([np.array([[1, 1], [30, 30]])], shape_type="line", name="line")
    tuner.pairs.remove_selected()
    tuner.pairs.regions.value = line
    tuner.pairs.add()
    assert train(qtbot, tuner) == "error" and "marks no area" in errors[-1]
    # The layer of a pair removed from the viewer: the pair goes too.
    viewer.layers.remove("img corrected")
    assert tuner.pairs.pairs == []


def test_mixed_precision_is_used_where_the_device_has_bfloat16_else_float32(tuner, qtbot, monkeypatch, errors):
    from napari_instance_tuner.core.training import loop, precision

    assert tuner.settings().amp is True  # asked for by default...
    tuner.resegment.value = False
    monkeypatch.setattr(precision, "bfloat16_supported", lambda device: False)  # a device without bfloat16
    assert train(qtbot, tuner) == "ok", errors
    assert tuner.tuned.settings.amp is False and "float32" in tuner.status.value  # ...and dropped, said so
    # a device with it (the training loop checks again: on a CPU without it, torch emulates bfloat16 slowly)
    monkeypatch.setattr(precision, "bfloat16_supported", lambda device: True)
    monkeypatch.setattr(loop, "bfloat16_supported", lambda device: True)
    assert train(qtbot, tuner) == "ok", errors
    assert tuner.tuned.settings.amp is True and "bfloat16" in tuner.status.value
    tuner.amp.value = False
    assert train(qtbot, tuner) == "ok", errors
    assert tuner.tuned.settings.amp is False and errors == []


def test_without_a_segment_widget_a_shipped_model_is_loaded_by_name(
    viewer, image, corrected, qtbot, tiny_checkpoint, tmp_path, monkeypatch, errors
):
    import shutil

    from napari_instance_tuner.core.io import checkpoint
    from napari_instance_tuner.widgets.finetune import FinetuneWidget

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", weights)  # start with no shipped model at all
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert widget.sessions.model is None and widget.model() is None and widget.fallback.selected is None
    widget.pairs.labels.value = corrected
    widget.pairs.add()
    widget.start()
    assert "no model" in errors[-1] and not widget.busy
    # A shipped model, chosen by name: Fine-tune loads it, then trains.
    shutil.copy(tiny_checkpoint, weights / "tiny-glands.safetensors")
    widget.fallback.combo.reset_choices()
    assert widget.fallback.selected == "tiny-glands" and widget.fallback.loaded is None
    widget.steps.value, widget.batch_size.value = 2, 1
    assert train(qtbot, widget) == "ok", errors
    assert widget.tuned.parent.path.name == "tiny-glands.safetensors" and len(widget.plot.values) == 2
    assert "open the Segment widget" in widget.status.value
    assert widget.tuned.scratch is not None and widget.tuned.scratch.is_file()
    assert [layer.name for layer in viewer.layers] == ["img", "img corrected"]


def test_export_package_of_the_fine_tuned_model_loads_in_the_segment_widget(with_image, tuner, viewer, qtbot,
                                                                             tmp_path, run,
                                                                             errors):
    """"Export bioimage.io package…" writes the fine-tuned model; the Segment widget's picker loads the zip and
    segments exactly as the fine-tuned checkpoint does."""
    from napari_instance_tuner.core.io.checkpoint import load_model

    packages = iter([str(tmp_path / "current"), str(tmp_path / "tuned.zip")])
    tuner.exporter.ask_path = lambda suggested: next(packages)
    with qtbot.waitSignal(tuner.exported, timeout=TIMEOUT_MS) as exported:
        tuner.export_package()  # nothing fine-tuned yet: the Segment widget's model, ".zip" added
    assert exported.args == [str(tmp_path / "current.zip")] and errors == []
    assert load_model(tmp_path / "current.zip").meta == with_image.current_model.meta

    tuner.resegment.value = False
    assert train(qtbot, tuner) == "ok", errors
    with qtbot.waitSignal(tuner.exported, timeout=TIMEOUT_MS):
        tuner.export_package()
    assert "wrote the bioimage.io package tuned.zip" in tuner.status.value
    package = load_model(tmp_path / "tuned.zip")
    assert package.meta["finetune"]["settings"]["steps"] == 3  # the fine-tuned record travels in the package
    state = tuner.tuned.model.state_dict()
    assert all(np.array_equal(state[k].numpy(), package.model.state_dict()[k].numpy()) for k in state)

    segment = with_image
    segment.load_weights(str(tmp_path / "tuned.zip"))
    qtbot.waitUntil(lambda: segment.models.loaded_key == str(tmp_path / "tuned.zip") and not segment.busy,
                    timeout=TIMEOUT_MS)
    assert run(segment) == "ok" and errors == []
    assert "tuned.zip (file)" in [label for label, _ in segment.models._choices()]


def test_time_budget_and_mixed_precision_are_the_defaults(tuner):
    settings = tuner.settings()
    assert settings.seconds == 60.0 and settings.amp and settings.steps == 3  # the fixture set 3 steps
    tuner.budget.value = 0  # 0: the steps alone decide
    assert tuner.settings().seconds is None


def test_training_runs_without_napari_activity_bar_and_shows_time_left(tuner, qtbot, monkeypatch, errors):
    """The activity dock's animated indicator repainted the window through a whole run (half a CPU on a
    software-OpenGL canvas): fine-tuning shows its progress in the widget only."""
    from unittest.mock import MagicMock

    import napari.utils

    bars: list = []
    monkeypatch.setattr(napari.utils, "progress", lambda *args, **kwargs: bars.append(kwargs) or MagicMock())
    tuner.resegment.value = False
    shown: list[str] = []
    show_time = tuner._show_time
    tuner._show_time = lambda record: (show_time(record), shown.append(tuner.status.value))
    assert train(qtbot, tuner) == "ok", errors
    assert bars == [] and len(tuner.plot.values) == 3
    assert [text.split("… ")[1].split(",")[0] for text in shown if "s left" in text] == ["step 1", "step 2", "step 3"]


def test_closing_the_widget_offers_to_save_unsaved_weights(tuner, viewer, qtbot, tmp_path, dialogs, errors):
    from napari_instance_tuner.core.io.checkpoint import load_model

    asked: list[str] = []
    tuner.scratch.ask_keep = lambda name: asked.append(name) or True
    tuner.resegment.value = False
    assert train(qtbot, tuner) == "ok", errors
    dialogs.path = str(tmp_path / "kept.safetensors")
    viewer.window.remove_dock_widget(tuner)
    tuner.deleteLater()
    qtbot.waitUntil(lambda: (tmp_path / "kept.safetensors").is_file(), timeout=TIMEOUT_MS)
    assert asked == ["tiny-finetuned"] and errors == []
    assert load_model(tmp_path / "kept.safetensors").meta["parent"]["name"] == "tiny"


def test_scratch_folder_is_removed_with_the_widget(with_image, tuner, viewer, qtbot, run, tmp_path, dialogs,
                                                   errors, never_ask_to_keep_weights):
    segment = with_image
    assert run(segment) == "ok"
    with qtbot.waitSignal(segment.run_finished, timeout=TIMEOUT_MS):
        assert train(qtbot, tuner) == "ok", errors
    folder = tuner.scratch.folder
    assert folder is not None and tuner.tuned.scratch.parent == folder and tuner.tuned.scratch.is_file()
    viewer.window.remove_dock_widget(tuner)
    tuner.deleteLater()
    qtbot.waitUntil(lambda: not folder.exists(), timeout=TIMEOUT_MS)
    assert never_ask_to_keep_weights == ["tiny-finetuned"]  # asked once; "Discard" removed it
    assert segment.current_model.path == folder / "tiny-finetuned.safetensors"  # the weights stay in memory


def test_saved_weights_are_not_asked_about(tuner, qtbot, tmp_path, dialogs, errors, never_ask_to_keep_weights):
    tuner.resegment.value = False
    assert train(qtbot, tuner) == "ok", errors
    dialogs.path = str(tmp_path / "mine.safetensors")
    with qtbot.waitSignal(tuner.saved, timeout=TIMEOUT_MS):
        tuner.save()
    assert tuner.scratch.unsaved is None
    tuner.scratch.close()
    assert never_ask_to_keep_weights == []


def test_closing_the_viewer_asks_about_unsaved_weights_then_removes_the_scratch_folder(
    with_image, tuner, viewer, qtbot, run, errors, never_ask_to_keep_weights
):
    segment = with_image
    assert run(segment) == "ok"
    with qtbot.waitSignal(segment.run_finished, timeout=TIMEOUT_MS):
        assert train(qtbot, tuner) == "ok", errors
    folder = tuner.scratch.folder
    assert folder.is_dir() and never_ask_to_keep_weights == []
    viewer.close()  # the window's close event, while the widgets are still whole
    assert never_ask_to_keep_weights == ["tiny-finetuned"] and not folder.exists()

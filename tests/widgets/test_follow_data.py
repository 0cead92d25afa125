"""Defaults follow the data: the image box, the proposed model, Export's labels and folder, saved weights."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _sample(name):
    from napari_instance_tuner._sample_data import SAMPLES

    (data, kwargs, _), *_ = SAMPLES[name]()
    return data, kwargs


def test_the_image_box_follows_the_selected_and_the_newly_added_image(segment, viewer):
    first = viewer.add_image(np.zeros((32, 32), np.uint8), name="first")
    assert segment.image.value is first
    second = viewer.add_image(np.zeros((32, 32), np.uint8), name="second")
    assert segment.image.value is second  # napari selects a new layer: the widget takes it
    viewer.layers.selection.active = first
    assert segment.image.value is first and segment.sessions.current is first
    viewer.add_labels(np.zeros((32, 32), np.int32), name="other labels")  # not an image: the box stays
    assert segment.image.value is first


def test_a_widget_opened_late_takes_the_selected_image_and_proposes_its_model(viewer, qtbot, errors):
    from napari_instance_tuner.widgets.segment import SegmentWidget

    worms, kwargs = _sample("worms")
    rgb, rgb_kwargs = _sample("glands")
    viewer.add_image(rgb, **rgb_kwargs)
    viewer.add_image(worms, **kwargs)
    viewer.layers.selection.active = viewer.layers["worms"]  # not the first image of the list
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    assert widget.image.value is viewer.layers["worms"] and widget.models.selected == "layering-bbbc010"
    assert widget.models.reason.value == "proposed: brightfield: dark objects on bright" and errors == []


def test_selecting_the_labels_of_a_run_selects_their_image(with_image, viewer, run):
    img = with_image.image.value
    assert run(with_image) == "ok"
    other = viewer.add_image(np.zeros((32, 32), np.uint8), name="other")
    assert with_image.image.value is other
    viewer.layers.selection.active = with_image.sessions.labels_layer(img)
    assert with_image.image.value is img
    viewer.layers.selection.active = other
    viewer.layers.selection.active = viewer.layers["img foreground"]  # a map layer of the run
    assert with_image.image.value is img


@pytest.mark.parametrize("sample, model, why", [("glands", "three-branch-glas-v10", "colour image"),
                                                ("nuclei", "maskrcnn-dsb2018", "fluorescence"),
                                                ("worms", "layering-bbbc010", "brightfield")])
def test_the_model_proposed_follows_the_kind_of_image(segment, viewer, sample, model, why):
    data, kwargs = _sample(sample)
    viewer.add_image(data, **kwargs)
    assert segment.models.selected == model
    assert segment.models.reason.value.startswith("proposed: ") and why in segment.models.reason.value
    assert segment.params.params_class.__module__.split(".")[-2] == segment.models.family_name().replace("-", "_")


def test_a_model_loaded_by_run_is_still_a_proposal_but_the_users_choice_is_kept(segment, viewer, qtbot,
                                                                               tiny_checkpoint):
    grey, kwargs = _sample("nuclei")
    segment.models.load(str(tiny_checkpoint), chosen=False)  # what Run does with the proposed model
    qtbot.waitUntil(lambda: not segment.busy, timeout=30_000)
    viewer.add_image(grey, **kwargs)
    assert segment.models.selected == "maskrcnn-dsb2018"
    segment.models.combo.value = "layering-bbbc010"  # the user's choice
    qtbot.waitUntil(lambda: not segment.busy, timeout=30_000)
    rgb, kwargs = _sample("glands")
    viewer.add_image(rgb, **kwargs)
    assert segment.models.selected == "layering-bbbc010"
    assert "three-branch-glas-v10 suits it; kept your choice" in segment.models.reason.value


def test_a_model_load_shows_in_the_dock(segment, qtbot, tiny_checkpoint):
    segment.load_weights(str(tiny_checkpoint))
    assert segment.progress_panel.text.startswith("Loading model tiny.safetensors")
    qtbot.waitUntil(lambda: not segment.busy, timeout=30_000)
    assert segment.progress_panel.isHidden()


def test_export_takes_the_labels_and_folder_of_the_image_in_hand(with_image, viewer, run, tmp_path):
    from napari.layers._source import layer_source

    from napari_instance_tuner.widgets.export import ExportWidget

    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export")
    assert Path(export.folder.value) == Path.cwd()  # the image has no file: the working folder, not home
    img = with_image.image.value
    assert run(with_image) == "ok"
    assert export.labels.value is with_image.sessions.labels_layer(img)

    (tmp_path / "slides").mkdir()
    with layer_source(path=str(tmp_path / "slides" / "case7.png")):
        case = viewer.add_image(np.zeros((32, 32), np.uint8), name="case7")
    mine = viewer.add_labels(np.zeros((32, 32), np.int32), name="case7 corrected")
    viewer.layers.selection.active = img
    assert export.labels.value is with_image.sessions.labels_layer(img)
    viewer.layers.selection.active = case  # the image in hand changes: its labels and its folder
    assert export.labels.value is mine and Path(export.folder.value) == tmp_path / "slides"
    export.folder.value = str(tmp_path)  # the user's folder is kept from now on
    viewer.layers.selection.active = img
    assert export.labels.value is with_image.sessions.labels_layer(img) and Path(export.folder.value) == tmp_path


def test_fine_tuned_weights_are_proposed_in_the_user_folder_and_listed_at_once(segment, user_weights, errors):
    from napari_instance_tuner.core.io.checkpoint import WEIGHTS_DIR
    from napari_instance_tuner.widgets._save_weights import Tuned, WeightsSaver

    asked, answer = [], [None]
    saver = WeightsSaver(lambda suggested: asked.append(suggested) or answer[0], lambda path: True,
                         on_saved=print, on_declined=print, on_finished=lambda: None)
    tuned = Tuned(parent=SimpleNamespace(name="three-branch-glas-v3", path=WEIGHTS_DIR / "x"), model=None,
                  result=None, pairs=[], settings=None)
    assert saver.save(tuned, []) is False  # the dialog was dismissed
    assert asked == [str(user_weights / "three-branch-glas-v3-finetuned.safetensors")]
    assert not str(asked[0]).startswith(str(WEIGHTS_DIR))
    answer[0] = str(WEIGHTS_DIR / "mine.safetensors")
    assert saver.save(tuned, []) is False and "installed weights folder" in errors[-1]
    assert not (WEIGHTS_DIR / "mine.safetensors").exists()

    saved = user_weights / "glands-tuned.safetensors"
    saved.write_bytes(b"")  # what the save job writes; the widget then announces it
    segment.sessions.weights_saved.emit(str(saved))
    assert os.fspath(saved) in segment.models.combo.choices  # listed without reopening the widget
    assert ("glands-tuned (yours)", str(saved)) in segment.models._choices()

"""The Segment widget in a real napari viewer (under Xvfb), with a tiny random-weight model."""

from __future__ import annotations

import gc
import json
import shutil
import time
import weakref

import numpy as np
import pytest

pytestmark = pytest.mark.gui

MAPS = ("foreground", "boundary", "centroid")


def _layer_names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def _set(widget, **values) -> None:
    for name, value in values.items():
        widget.params.controls[name].value = value


def test_run_adds_maps_and_labels_named_after_the_image(with_image, viewer, run, errors):
    widget = with_image
    assert run(widget) == "ok", errors
    for name in MAPS:
        layer = viewer.layers[f"img {name}"]
        assert layer.data.shape == (64, 96) and layer.data.dtype == np.float32
        assert layer.blending == "additive" and not layer.visible  # "show maps" is off by default
    labels = viewer.layers["img instances"]
    assert labels.data.shape == (64, 96)
    assert widget.count.value == str(len(np.unique(labels.data[labels.data > 0])))
    assert widget.device_used.value.startswith("ran on CPU")
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert errors == []
    # The image combo lists the source image only, not the plugin's map layers.
    assert [c for c in widget.image.choices] == [viewer.layers["img"]]


def test_rerun_replaces_only_the_plugins_own_layers(with_image, viewer, run):
    widget = with_image
    mine = viewer.add_labels(np.zeros((64, 96), np.uint32), name="img instances mine")
    assert run(widget) == "ok"
    first = [viewer.layers[f"img {n}"] for n in (*MAPS, "instances")]
    assert run(widget) == "ok"
    assert [viewer.layers[f"img {n}"] for n in (*MAPS, "instances")] == first  # same layers, updated
    assert len(viewer.layers) == 1 + 1 + len(first) and mine in viewer.layers and not mine.data.any()


def test_show_maps_checkbox_toggles_map_layers(with_image, viewer, run):
    assert run(with_image) == "ok"
    with_image.show_maps.value = True
    assert all(viewer.layers[f"img {n}"].visible for n in MAPS)
    with_image.show_maps.value = False
    assert not any(viewer.layers[f"img {n}"].visible for n in MAPS)


def test_stack_runs_slice_by_slice(loaded, viewer, run, predict_calls):
    stack = (np.random.default_rng(0).random((3, 40, 48)) * 4000).astype(np.uint16)
    loaded.image.value = viewer.add_image(stack, name="stack")
    assert run(loaded) == "ok"
    assert predict_calls == [(40, 48)] * 3
    assert viewer.layers["stack instances"].data.shape == (3, 40, 48)
    assert viewer.layers["stack foreground"].data.shape == (3, 40, 48)


def test_rgb_stack_runs_slice_by_slice(loaded, viewer, run, predict_calls):
    stack = np.random.default_rng(1).integers(0, 255, (2, 32, 40, 3), dtype=np.uint8)
    loaded.image.value = viewer.add_image(stack, name="rgb stack", rgb=True)
    assert run(loaded) == "ok"
    assert predict_calls == [(32, 40, 3)] * 2
    assert viewer.layers["rgb stack instances"].data.shape == (2, 32, 40)


def test_slider_change_updates_labels_without_the_network(with_image, viewer, qtbot, run, predict_calls):
    widget = with_image
    assert run(widget) == "ok" and len(predict_calls) == 1
    labels = viewer.layers["img instances"]
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, fg_threshold=1.0)  # nothing is foreground
    assert not labels.data.any() and widget.count.value == "0"
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, fg_threshold=0.0, subtract_boundaries=False, require_centroid=False, min_size=0)
    assert viewer.layers["img instances"] is labels
    assert np.all(labels.data == 1) and widget.count.value == "1"  # everything is one object
    assert len(predict_calls) == 1  # the network ran once, for Run only
    # The layer records what made it (the Export widget turns this into a replayable recipe).
    info = labels.metadata["napari_instance_tuner"]
    assert info["params"]["fg_threshold"] == 0.0 and info["image_name"] == "img" and info["device"] == "cpu"
    assert info["weights_sha256"] == widget.models.loaded.sha256 and info["image_shape"] == [64, 96, 3]


def test_rapid_changes_are_coalesced(with_image, qtbot, run, postprocess_calls):
    widget = with_image
    assert run(widget) == "ok"
    before = len(postprocess_calls)
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        for value in np.linspace(0.1, 0.6, 20):
            _set(widget, fg_threshold=float(value))
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    qtbot.wait(100)
    assert 1 <= len(postprocess_calls) - before <= 2
    assert postprocess_calls[-1].fg_threshold == pytest.approx(0.6, abs=0.01)  # the latest value wins


def test_reset_restores_model_defaults(with_image, qtbot, run):
    widget = with_image
    defaults = widget.models.loaded.family.default_params(widget.models.loaded.meta)
    assert run(widget) == "ok"
    _set(widget, min_size=5000, open_radius=7)
    qtbot.waitUntil(lambda: widget.sessions.get(widget.image.value).params.min_size == 5000, timeout=10_000)
    widget.params.reset_button.native.click()  # a job of the values set above may still be running
    assert widget.params.params() == defaults
    qtbot.waitUntil(lambda: widget.sessions.get(widget.image.value).params == defaults, timeout=10_000)
    assert widget.params.params() == defaults


def test_the_same_image_announced_again_keeps_the_values_on_the_controls(with_image, qtbot, run, monkeypatch):
    """CI found Reset undone: the layer list re-announced the image while the job of the values before Reset
    ran, and the controls took that job's values back from the session."""
    widget = with_image
    defaults = widget.models.loaded.family.default_params(widget.models.loaded.meta)
    assert run(widget) == "ok"
    _set(widget, min_size=5000, open_radius=7)
    session = widget.sessions.get(widget.image.value)
    qtbot.waitUntil(lambda: (session.params.min_size, session.params.open_radius) == (5000, 7), timeout=10_000)
    monkeypatch.setattr(widget, "refresh_labels", lambda: None)  # Reset's own job has not run yet
    widget.params.set_values(defaults)
    widget.image.changed.emit(widget.image.value)  # the same image, announced again
    assert widget.params.params() == defaults and session.params.min_size == 5000


def test_cancel_leaves_no_half_made_layer(with_image, viewer, qtbot, slow_network):
    widget = with_image
    with qtbot.waitSignal(widget.run_finished, timeout=30_000) as blocker:
        widget.run()
        assert widget.cancel_button.enabled and not widget.run_button.enabled
        qtbot.wait(120)
        widget.cancel()
    assert blocker.args == ["cancelled"]
    assert _layer_names(viewer) == ["img"] and widget.sessions.segmented() == []
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancelled_rerun_keeps_previous_layers(with_image, viewer, qtbot, run, monkeypatch):
    widget = with_image
    assert run(widget) == "ok"
    before = {layer.name: np.copy(layer.data) for layer in viewer.layers}
    session = widget.sessions.get(widget.image.value)
    maps = session.maps
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily
    from napari_instance_tuner.core.progress import Progress

    def endless(self, model, image, meta, *, cancel=None, **kwargs):
        while True:
            cancel.check()
            time.sleep(0.005)
            yield Progress(0, 1, "waiting")

    monkeypatch.setattr(ThreeBranchFamily, "predict_maps", endless)
    with qtbot.waitSignal(widget.run_finished, timeout=10_000) as blocker:
        widget.run()
        qtbot.wait(50)
        widget.cancel()
    assert blocker.args == ["cancelled"]
    assert {layer.name for layer in viewer.layers} == set(before)
    assert all(np.array_equal(viewer.layers[name].data, data) for name, data in before.items())
    assert widget.sessions.get(widget.image.value) is session and session.maps is maps


def test_edited_labels_are_kept_on_rerun(with_image, viewer, run):
    widget = with_image
    assert run(widget) == "ok"
    painted = viewer.layers["img instances"]
    painted.paint((10, 10), 77, refresh=True)  # what the brush does
    assert run(widget) == "ok"
    assert painted.name == "img instances (edited)" and painted.data[10, 10] == 77
    fresh = viewer.layers["img instances"]
    assert fresh is not painted and fresh.data[10, 10] != 77
    assert run(widget) == "ok"
    assert viewer.layers["img instances"] is fresh  # an unedited layer is simply updated


def test_labels_changed_in_place_are_kept_on_slider_change(with_image, viewer, qtbot, run):
    widget = with_image
    assert run(widget) == "ok"
    layer = viewer.layers["img instances"]
    layer.data[:5, :5] = 9  # an in-place change that fires no event: caught by the digest
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, min_size=0)
    assert layer.name == "img instances (edited)" and np.all(layer.data[:5, :5] == 9)
    assert viewer.layers["img instances"] is not layer


def test_a_slider_move_over_corrected_labels_asks_and_replaces_only_when_told(with_image, viewer, qtbot, run,
                                                                             keep_corrections):
    widget = with_image
    assert run(widget) == "ok"
    layer = viewer.layers["img instances"]
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, min_size=1)
    assert keep_corrections == [] and viewer.layers["img instances"] is layer  # nothing corrected: no question
    layer.paint((10, 10), 77, refresh=True)
    session = widget.current_session
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, min_size=0)
    # Asked once, kept: the corrected layer is renamed, not lost, and the corrections are in the session.
    assert keep_corrections == ["img instances"] and widget.corrections.last == "kept"
    assert layer.name == "img instances (edited)" and layer.data[10, 10] == 77
    assert session.corrections is not None and session.corrections[10, 10] == 77
    fresh = viewer.layers["img instances"]
    fresh.paint((12, 12), 55, refresh=True)
    widget.corrections.ask = lambda name: keep_corrections.append(name) or False  # "Replace them"
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, min_size=2)
    assert keep_corrections == ["img instances", "img instances"] and widget.corrections.last == "replaced"
    assert viewer.layers["img instances"] is fresh and fresh.data[12, 12] != 55  # written over, as asked
    assert session.corrections[12, 12] == 55  # the replaced corrections are still in the session
    assert [layer.name for layer in viewer.layers].count("img instances (edited)") == 1


def test_wrong_weights_file_gives_a_notification_and_the_widget_stays_usable(
    with_image, tmp_path, qtbot, run, errors
):
    widget = with_image
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 4 + b"not a checkpoint")
    widget.load_weights(bad)
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert len(errors) == 1 and "broken.safetensors" in errors[0]
    assert widget.models.selected == widget.models.loaded_key  # back on the working model
    assert str(bad) not in widget.models.combo.choices
    assert run(widget) == "ok"


def test_unsupported_image_shape_gives_a_notification(loaded, viewer, errors, run):
    loaded.image.value = viewer.add_image(np.zeros((2, 2, 16, 16), np.float32), name="4d")
    layers = len(viewer.layers)
    loaded.run()
    assert len(errors) == 1 and "not supported" in errors[0]
    assert len(viewer.layers) == layers and not loaded.busy and loaded.run_button.enabled


def test_bad_image_content_gives_a_notification(loaded, viewer, errors, run):
    loaded.image.value = viewer.add_image(np.zeros((16, 16, 2), np.float32), name="two channels")
    assert run(loaded) == "error"
    assert len(errors) == 1 and "2 channels" in errors[0]
    assert _layer_names(viewer) == ["two channels"] and loaded.run_button.enabled


def test_no_image_gives_a_notification(loaded, errors):
    loaded.run()
    assert errors and "no image" in errors[0] and not loaded.busy


def test_viewer_stays_responsive_during_inference(with_image, qtbot, slow_network):
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    with qtbot.waitSignal(with_image.run_finished, timeout=30_000) as blocker:
        with_image.run()
    timer.stop()
    assert blocker.args == ["ok"]
    assert len(ticks) >= 15  # the inference took >= 0.6 s; a blocked GUI thread would not tick


def test_closing_the_image_releases_its_cached_maps(with_image, viewer, run):
    widget = with_image
    assert run(widget) == "ok"
    maps = weakref.ref(widget.sessions.get(widget.image.value).maps)
    viewer.layers.remove("img")
    assert widget.sessions.segmented() == [] and widget.image.value is None and not widget.run_button.enabled
    gc.collect()
    assert maps() is None


def test_a_fine_tuned_models_card_names_its_base_model_data_steps_and_date(viewer, image, qtbot, tmp_path,
                                                                          tiny_checkpoint):
    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.progress import run as run_work
    from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune, save_finetuned
    from napari_instance_tuner.widgets.segment import SegmentWidget

    parent = load_model(tiny_checkpoint)
    labels = np.zeros((48, 48), np.uint32)
    labels[8:20, 8:20], labels[28:40, 24:36] = 1, 2
    pair = CorrectedImage(np.stack([(labels > 0) * 200 + 20] * 3, -1).astype(np.uint8), labels)
    settings = FinetuneSettings(steps=2, batch_size=1, crop=32)
    model, result = run_work(finetune(parent, [pair], settings))
    tuned = save_finetuned(tmp_path / "my-glands.safetensors", parent, model, result, [pair], settings)

    widget = SegmentWidget(viewer)
    widget.load_weights(str(tuned))
    qtbot.waitUntil(lambda: widget.models.loaded is not None, timeout=10_000)
    date = widget.models.loaded.meta["finetune"]["date"]
    summary = f"fine-tuned from {parent.name} on 1 image (2 objects), 2 steps, {date}"
    assert summary.startswith(widget.models.card.value.replace("\n", " ").rstrip("…"))  # cut to fit the dock
    tooltip = widget.models.card.tooltip.splitlines()
    assert f"summary: {summary}" in tooltip and f"fine tuned from: {parent.name} ({parent.path.name})" in tooltip
    assert "family: three-branch" in tooltip and "fine tune steps: 2" in tooltip


def test_shipped_model_is_listed_with_its_card_and_loaded_on_run(
    viewer, image, qtbot, run, tmp_path, tiny_checkpoint, monkeypatch, errors
):
    from napari_instance_tuner.core.io import checkpoint
    from napari_instance_tuner.widgets.segment import SegmentWidget

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_checkpoint, weights / "tiny-glands.safetensors")
    card = {"family": "three-branch", "trained_on": "nothing (random weights)", "metrics": {"object_f1": 0.5}}
    (weights / "tiny-glands.json").write_text(json.dumps(card))
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", weights)

    widget = SegmentWidget(viewer)
    assert widget.models.selected == "tiny-glands" and widget.models.loaded is None  # nothing loaded yet
    assert widget.models.card.value == "three-branch, trained on nothing (random weights)"
    assert "object_f1 0.500" in widget.models.card.tooltip
    assert [s.name for s in widget.params.controls][:1] == ["fg_threshold"]  # built from the card's family
    assert run(widget) == "ok", errors
    assert widget.models.loaded_key == "tiny-glands" and "img instances" in viewer.layers


def test_widget_opens_from_the_plugin_menu(make_napari_viewer, tiny_checkpoint, qtbot, run, errors):
    npe2 = pytest.importorskip("npe2")
    if "napari-instance-tuner" not in npe2.PluginManager.instance()._manifests:
        pytest.skip("the package is not installed, so napari cannot discover its manifest")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-instance-tuner", "Segment")
    from napari_instance_tuner.widgets.segment import SegmentWidget

    assert isinstance(widget, SegmentWidget)
    # napari hands plugins a proxy of the viewer and its layers: the widget must work through it.
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8), name="img")
    assert widget.image.value == image
    widget.load_weights(tiny_checkpoint)
    assert run(widget) == "ok", errors
    labels = viewer.layers["img instances"]
    assert run(widget) == "ok" and viewer.layers["img instances"] is labels  # replaced in place
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        widget.params.controls["fg_threshold"].value = 1.0
    assert not labels.data.any()
    viewer.layers.remove(image)
    assert widget.sessions.segmented() == []
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)


def test_screenshot_of_a_segmented_sample_is_not_blank(make_napari_viewer, tiny_checkpoint, qtbot, run, tmp_path):
    import imageio.v3 as iio

    from napari_instance_tuner.widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), rgb=True)
    widget.image.value = image
    widget.load_weights(tiny_checkpoint)
    assert run(widget) == "ok"
    path = tmp_path / "shot.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    shot = iio.imread(path)
    assert shot.ndim == 3 and shot.shape[0] > 100 and shot.shape[1] > 100
    assert shot[..., :3].std() > 0


def test_closing_the_image_during_a_run_adds_no_layer(with_image, viewer, qtbot, slow_network):
    widget = with_image
    with qtbot.waitSignal(widget.run_finished, timeout=30_000) as blocker:
        widget.run()
        qtbot.wait(100)
        viewer.layers.remove("img")
    assert blocker.args == ["cancelled"] and len(viewer.layers) == 0 and widget.sessions.segmented() == []


def test_cancel_while_the_model_loads_runs_nothing(segment, image, viewer, qtbot, tiny_checkpoint, predict_calls):
    segment.image.value = image
    segment.load_weights(tiny_checkpoint)
    assert segment.models.loading
    with qtbot.waitSignal(segment.run_finished, timeout=10_000) as blocker:
        segment.run()  # waits for the model
        segment.cancel()
    assert blocker.args == ["cancelled"]
    qtbot.waitUntil(lambda: not segment.busy, timeout=30_000)
    assert segment.models.loaded is not None  # the model still loaded...
    assert predict_calls == [] and _layer_names(viewer) == ["img"]  # ...but nothing ran


def test_sample_data_opens_from_the_file_menu(make_napari_viewer):
    npe2 = pytest.importorskip("npe2")
    if "napari-instance-tuner" not in npe2.PluginManager.instance()._manifests:
        pytest.skip("the package is not installed, so napari cannot discover its manifest")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-instance-tuner", "nuclei")
    assert _layer_names(viewer) == ["nuclei", "nuclei ground truth"]
    assert viewer.layers["nuclei ground truth"].data.max() >= 20


def test_removing_the_image_releases_its_cached_maps(with_image, viewer, run, qtbot):
    import gc
    import weakref

    layer = with_image.image.value
    for value in (0.4, 0.45):  # runs and post-processing jobs, whose closures hold the result
        assert run(with_image) == "ok"
        with qtbot.waitSignal(with_image.labels_updated, timeout=10_000):
            with_image.params.controls[0].value = value
    maps = weakref.ref(with_image.sessions.get(layer).maps)
    viewer.layers.remove(layer)
    qtbot.wait(50)
    gc.collect()
    assert maps() is None and with_image.sessions.get(layer) is None


def test_an_rgb_image_is_proposed_the_default_gland_model_until_the_user_chooses(segment, viewer, qtbot):
    from napari_instance_tuner.core.io.checkpoint import default_model
    from napari_instance_tuner.core.synthetic import synthetic_glands

    gland_model = default_model("rgb")
    assert gland_model is not None
    rgb, _ = synthetic_glands((64, 96), seed=0)
    viewer.add_image(rgb, name="he", rgb=True)
    assert segment.image.value is viewer.layers["he"]
    assert segment.models.selected == gland_model
    assert "proposed: colour image" in segment.models.reason.value
    other = next(name for name in segment.models._keys() if name != gland_model)
    segment.models.combo.value = other  # the user's choice: loads it, and no proposal replaces it
    qtbot.waitUntil(lambda: not segment.busy, timeout=30_000)
    viewer.add_image(rgb, name="he 2", rgb=True)
    segment.image.value = viewer.layers["he 2"]
    assert segment.models.selected == other


def test_changes_made_together_post_process_once_and_unchanged_values_not_at_all(with_image, viewer, qtbot, run,
                                                                                postprocess_calls):
    widget = with_image
    assert run(widget) == "ok"
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, min_size=3, close_radius=1)  # one pass of the event loop: one update with both values
    assert [(p.min_size, p.close_radius) for p in postprocess_calls[-1:]] == [(3, 1)] and len(postprocess_calls) == 2
    updates: list = []
    widget.labels_updated.connect(lambda: updates.append(1))
    _set(widget, min_size=5)
    _set(widget, min_size=3)  # dragged back before the update ran: the labels shown are already these
    qtbot.wait(300)
    assert len(postprocess_calls) == 2 and updates == []

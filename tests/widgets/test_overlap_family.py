"""The widgets with a family whose objects may overlap (layering): maps, live tuning, masks, export, errors.

Most tests replace the layering network by constructed maps of two crossing bars, a horizontal bar in
"layer_1" and a vertical bar in "layer_2", so the labels hold two objects that overlap where the bars
cross; one test runs the real tiny random-weight network.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_instance_tuner.core.io.mask_stack import read_mask_stack

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000
TAG = "napari_instance_tuner"
SHAPE = (64, 80)
N_LAYERS = 4  # the tiny layering model of tests/conftest.py
HORIZONTAL = (slice(26, 38), slice(4, 76))  # 12 x 72 = 864 pixels, layer_1 at 0.9
VERTICAL = (slice(2, 62), slice(34, 46))  # 60 x 12 = 720 pixels, layer_2 at 0.8; 144 shared, 2 x 288 not


def crossing_maps():
    """Maps of two crossing bars (foreground = union); a new object per call (post-processing caches in it)."""
    from napari_instance_tuner.core.family import Maps

    layers = np.zeros((N_LAYERS, *SHAPE), np.float32)
    layers[0][HORIZONTAL] = 0.9
    layers[1][VERTICAL] = 0.8
    arrays = {"foreground": np.where(layers.max(0) > 0, np.float32(0.95), np.float32(0.0))}
    arrays.update({f"layer_{k + 1}": layers[k] for k in range(N_LAYERS)})
    return Maps(arrays=arrays)


def _bar_masks() -> np.ndarray:
    masks = np.zeros((2, *SHAPE), bool)
    masks[0][HORIZONTAL] = True
    masks[1][VERTICAL] = True
    return masks


def _set(widget, **values) -> None:
    for name, value in values.items():
        widget.params.controls[name].value = value


def _info(layer) -> dict:
    return layer.metadata[TAG]


def _assert_masks_match_labels(widget, layer) -> np.ndarray:
    """The objects recorded for ``layer`` are those of the labels it shows; returns them as a dense stack."""
    track = widget.sessions.track(layer)  # the registry's record of the Labels layer
    objects = track.objects
    assert len(objects) == int(widget.count.value) and objects.shape == SHAPE
    np.testing.assert_array_equal(objects.union(), layer.data > 0)
    assert track.scores.shape == (len(objects),)
    assert objects is widget.current_session.objects  # the session's objects themselves, not a copy
    return objects.to_dense()


@pytest.fixture
def layering_checkpoint(tmp_path, tiny_loaded):
    """Path of a saved tiny random-weight layering checkpoint."""
    return tiny_loaded("layering", tmp_path).path


@pytest.fixture
def layering(segment, layering_checkpoint, qtbot):
    """The Segment widget with the tiny layering model loaded through "Load weights…"."""
    segment.load_weights(layering_checkpoint)
    qtbot.waitUntil(lambda: segment.models.loaded is not None and not segment.busy, timeout=TIMEOUT_MS)
    assert segment.models.loaded.family.name == "layering"
    return segment


@pytest.fixture
def worms(viewer):
    """A 64 x 80 synthetic worm image layer named "worms"."""
    from napari_instance_tuner.core.synthetic import synthetic_worms

    image, _, _ = synthetic_worms(SHAPE, seed=0)
    return viewer.add_image(image, name="worms")


@pytest.fixture
def crossing(monkeypatch) -> list[tuple]:
    """Makes the layering family's ``predict_maps`` return :func:`crossing_maps`; records its calls."""
    from napari_instance_tuner.core.families.layering.family import LayeringFamily
    from napari_instance_tuner.core.progress import Progress

    calls: list[tuple] = []

    def constructed(self, model, image, meta, **kwargs):
        calls.append(np.shape(image))
        yield Progress(1, 1, "constructed maps")
        return crossing_maps()

    monkeypatch.setattr(LayeringFamily, "predict_maps", constructed)
    return calls


@pytest.fixture
def crossed(layering, worms, crossing, run, errors):
    """The layering widget after a Run on the crossing bars with the model's default parameters."""
    layering.image.value = worms
    assert run(layering) == "ok", errors
    return layering


# -- map layers and parameter controls -------------------------------------------------------------------


def test_layering_maps_show_foreground_and_add_layers_hidden(layering, worms, viewer, qtbot, run, errors):
    """The real tiny network: 1 + N map layers, only the foreground follows "show maps"."""
    from magicgui.widgets import CheckBox, FloatSlider, Slider

    widget = layering
    controls = {c.name: type(c) for c in widget.params.controls}
    assert controls == {"threshold": FloatSlider, "min_size": Slider, "allow_overlaps": CheckBox, "fill_gaps": FloatSlider}
    widget.image.value = worms
    widget.show_maps.value = True
    assert run(widget) == "ok", errors
    names = ["foreground", *(f"layer_{k}" for k in range(1, N_LAYERS + 1))]
    maps = [viewer.layers[f"worms {name}"] for name in names]
    assert all(m.data.shape == SHAPE and m.data.dtype == np.float32 for m in maps)
    assert [m.visible for m in maps] == [True] + [False] * N_LAYERS
    assert len({m.colormap.name for m in maps}) == len(maps)  # each map its own colour
    # The per-layer maps are shown masked by the foreground (not as solid sheets); the foreground as it is.
    arrays = widget.current_session.maps.slices[0].arrays
    assert np.array_equal(maps[0].data, arrays["foreground"])
    for k, layer in enumerate(maps[1:], 1):
        assert np.allclose(layer.data, arrays[f"layer_{k}"] * arrays["foreground"])
    widget.show_maps.value = False
    assert not any(m.visible for m in maps)
    widget.show_maps.value = True
    assert [m.visible for m in maps] == [True] + [False] * N_LAYERS
    # Random weights: every map is nearly constant (about 0.4-0.6); a low threshold makes objects.
    labels = viewer.layers["worms instances"]
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, threshold=0.2, min_size=0)
    assert labels.data.any() and int(widget.count.value) >= 1
    _assert_masks_match_labels(widget, labels)
    assert run(widget) == "ok"  # a re-run updates the same layers, keeping their visibility
    assert [viewer.layers[f"worms {name}"] for name in names] == maps
    assert [m.visible for m in maps] == [True] + [False] * N_LAYERS


def test_three_branch_labels_carry_no_masks(with_image, viewer, run, errors):
    assert run(with_image) == "ok", errors
    info = _info(viewer.layers["img instances"])
    assert "masks" not in info and "scores" not in info and info["labels_digest"]
    assert with_image.current_session.objects is None
    assert with_image.sessions.track(viewer.layers["img instances"]).objects is None
    assert not [layer for layer in viewer.layers if "objects" in layer.name]  # no plane layers


# -- live tuning ---------------------------------------------------------------------------------------


def test_crossing_objects_keep_their_overlap(crossed, viewer, crossing):
    widget = crossed
    labels = viewer.layers["worms instances"]
    assert widget.count.value == "2"
    masks = _assert_masks_match_labels(widget, labels)
    np.testing.assert_array_equal(masks, _bar_masks())  # larger object first; the crossing is in both
    np.testing.assert_allclose(widget.sessions.track(labels).scores, [0.9, 0.8], atol=1e-6)
    assert crossing == [SHAPE]
    # The two crossing bars are shown whole on two hidden Labels planes (greedy colouring), with their labels.
    planes = [viewer.layers["worms objects 1/2"], viewer.layers["worms objects 2/2"]]
    assert not any(p.visible for p in planes) and all(_info(p)["role"] == "plane" for p in planes)
    np.testing.assert_array_equal(planes[0].data, masks[0] * 1)
    np.testing.assert_array_equal(planes[1].data, masks[1] * 2)


@pytest.mark.parametrize(
    ("values", "count", "overlap"),
    [
        ({"allow_overlaps": False}, 3, False),  # the crossing goes to layer_1 only: the vertical bar splits
        ({"threshold": 0.85}, 3, False),  # layer_2 (0.8) is below the threshold at the crossing
        ({"min_size": 750}, 1, False),  # the vertical bar (720 pixels) is dropped
        ({"min_size": 700}, 2, True),
    ],
)
def test_parameter_changes_update_labels_and_masks_without_the_network(
    crossed, viewer, qtbot, crossing, values, count, overlap
):
    widget = crossed
    labels = viewer.layers["worms instances"]
    before = widget.sessions.track(labels).objects
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        _set(widget, **values)
    assert viewer.layers["worms instances"] is labels and widget.count.value == str(count)
    masks = _assert_masks_match_labels(widget, labels)
    assert widget.sessions.track(labels).objects is not before  # the cached objects follow the labels shown
    assert (masks.sum(0) > 1).any() == overlap
    planes = [layer for layer in viewer.layers if layer.name.startswith("worms objects")]
    assert len(planes) == (2 if overlap else 0)  # plane layers only while objects overlap
    recorded = {"threshold": 0.5, "min_size": 250, "allow_overlaps": True, "fill_gaps": 0.0, **values}
    assert labels.metadata[TAG]["params"] == pytest.approx(recorded)
    assert crossing == [SHAPE]  # post-processing only: the network ran once, for Run


def test_toggling_allow_overlaps_back_restores_the_overlap(crossed, viewer, qtbot, crossing):
    widget = crossed
    box = widget.params.controls["allow_overlaps"]
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        box.native.click()  # what the user does
    assert box.value is False and widget.count.value == "3"
    with qtbot.waitSignal(widget.labels_updated, timeout=10_000):
        box.native.click()
    assert widget.count.value == "2"
    masks = _assert_masks_match_labels(widget, viewer.layers["worms instances"])
    np.testing.assert_array_equal(masks, _bar_masks())
    assert crossing == [SHAPE]


def test_a_stack_keeps_labels_only(layering, viewer, crossing, run, errors):
    layering.image.value = viewer.add_image(np.zeros((2, *SHAPE), np.uint16), name="stack")
    assert run(layering) == "ok", errors
    labels = viewer.layers["stack instances"]
    assert labels.data.shape == (2, *SHAPE) and layering.count.value == "4"
    assert "masks" not in _info(labels) and layering.current_session.objects is None
    assert layering.sessions.track(labels).objects is None
    assert len(np.unique(labels.data[labels.data > 0])) >= 2  # ids continue across slices


# -- export ----------------------------------------------------------------------------------------------


@pytest.fixture
def export(viewer, qtbot, tmp_path):
    """The Export widget writing into ``tmp_path / "out"``; replaces files without asking."""
    from napari_instance_tuner.widgets.export import ExportWidget

    widget = ExportWidget(viewer, confirm_overwrite=lambda paths: True)
    viewer.window.add_dock_widget(widget, name="Export")
    (tmp_path / "out").mkdir()
    widget.folder.value = str(tmp_path / "out")
    yield widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def _export(widget, qtbot, layer, **formats) -> str:
    widget.labels.value = layer
    for fmt, box in widget.formats.items():
        box.value = formats.get(fmt, False)
    with qtbot.waitSignal(widget.export_finished, timeout=TIMEOUT_MS) as blocker:
        widget.export_button.native.click()
    return blocker.args[0]


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_writes_the_overlapping_masks_and_one_row_per_mask(crossed, viewer, export, qtbot, tmp_path,
                                                                   errors):
    layer = viewer.layers["worms instances"]
    assert _export(export, qtbot, layer, masks=True, csv=True, geojson=True) == "ok", errors
    out = tmp_path / "out"
    with np.load(out / "worms instances_masks.npz") as npz:  # packed planes: the crossing bars on two planes
        assert npz["planes"].dtype == np.uint32 and npz["planes"].shape == (2, *SHAPE)
        np.testing.assert_array_equal(npz["labels"], [1, 2])
        np.testing.assert_allclose(npz["scores"], crossed.sessions.track(layer).scores)
    objects, _, _ = read_mask_stack(out / "worms instances_masks.npz")
    np.testing.assert_array_equal(objects.to_dense(), crossed.sessions.track(layer).objects.to_dense())
    rows = _rows(out / "worms instances.csv")
    # One row per mask with the whole object's area: the labels alone give the vertical bar 720 - 144.
    assert [(r["label"], float(r["area"])) for r in rows] == [("1", 864.0), ("2", 720.0)]
    assert [round(float(r["score"]), 3) for r in rows] == [0.9, 0.8]
    assert "edited" not in export.status.value


def test_export_after_editing_the_labels_uses_the_labels(crossed, viewer, export, qtbot, tmp_path, errors):
    layer = viewer.layers["worms instances"]
    layer.paint((2, 2), 7, refresh=True)  # the masks no longer describe these labels
    assert _export(export, qtbot, layer, masks=True, csv=True) == "ok", errors
    with np.load(tmp_path / "out" / "worms instances_masks.npz") as npz:
        np.testing.assert_array_equal(npz["labels"], np.unique(layer.data[layer.data > 0]))
        assert npz["planes"].shape[0] == 1  # from the label image: no overlap left, one plane
        assert "scores" not in npz
    assert len(_rows(tmp_path / "out" / "worms instances.csv")) == 3
    assert "labels edited" in export.status.value
    assert _info(layer)["labels_digest"]  # the recipe records the edit too
    recipe = (tmp_path / "out" / "worms instances.recipe.json").read_text()
    assert '"labels_edited": true' in recipe


# -- GUI errors (issue 9, item 3) ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "wrong architecture"])
def test_corrupt_or_mismatched_weights_give_a_notification(layering, worms, tmp_path, qtbot, run, errors,
                                                           layering_checkpoint, damage, tiny_meta):
    from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint

    widget = layering
    widget.image.value = worms
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        data = layering_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:  # layering tensors under three-branch metadata
        save_checkpoint(bad, load_model(layering_checkpoint).model.state_dict(), tiny_meta())
    widget.load_weights(bad)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert len(errors) == 1 and "bad.safetensors" in errors[0]
    assert widget.models.loaded.family.name == "layering"  # the working model stays
    assert widget.run_button.enabled and run(widget) == "ok" and len(errors) == 1


@pytest.mark.parametrize("shape", [(64, 80, 5), (2, 3, 64, 80), (64, 80, 3, 2)])
def test_unsupported_image_shape_gives_a_notification(layering, viewer, run, errors, crossing, shape):
    widget = layering
    widget.image.value = viewer.add_image(np.zeros(shape, np.float32), name="odd")
    widget.run()  # refused before any work starts
    assert len(errors) == 1 and "not supported" in errors[0] and str(shape) in errors[0]
    assert [layer.name for layer in viewer.layers] == ["odd"] and crossing == []
    assert not widget.busy and widget.run_button.enabled


def test_missing_image_layer_gives_a_notification(layering, viewer, worms, qtbot, run, errors, crossing):
    widget = layering
    viewer.layers.remove(worms)
    assert widget.image.value is None and not widget.run_button.enabled  # nothing to segment
    widget.run()
    assert len(errors) == 1 and "no image" in errors[0] and not widget.busy
    worms = viewer.add_image(np.zeros(SHAPE, np.uint16), name="worms again")
    assert widget.image.value == worms and widget.run_button.enabled  # usable again
    assert run(widget) == "ok" and len(errors) == 1


def test_failing_network_gives_a_notification(layering, worms, monkeypatch, run, errors):
    from napari_instance_tuner.core.errors import InputImageError
    from napari_instance_tuner.core.families.layering.family import LayeringFamily

    def failing(self, model, image, meta, **kwargs):
        raise InputImageError("the network refused this image")
        yield  # a generator, like the real one

    monkeypatch.setattr(LayeringFamily, "predict_maps", failing)
    layering.image.value = worms
    assert run(layering) == "error"
    assert len(errors) == 1 and "refused" in errors[0]
    assert not layering.busy and layering.run_button.enabled and "worms instances" not in layering.viewer.layers

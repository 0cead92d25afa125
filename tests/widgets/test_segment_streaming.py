"""The Segment widget on images too large for cached maps: streamed runs and multiscale Labels layers.

The limits are made small (:data:`STREAM_PIXELS` 64 x 64, 64 px tiles with a 16 px halo, pyramid levels down to
32 px) so a 160 x 160 image is streamed in 9 tiles by the tiny random-weight model in well under a second.
A random network's maps are nearly constant (no objects), so :func:`maps_from_image` keeps the network running
but hands post-processing maps read from the image: bright disks, some on tile seams, become the objects.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SETTINGS = {"tile": 64, "halo": 16}
SIZE = 160  # 3 x 3 tiles of 64 px
#: (cy, cx) of radius-9 disks: on the seams at 64 and 128, on a corner, and inside tiles.
DISKS = ((64, 30), (30, 64), (64, 64), (128, 100), (100, 128), (30, 110), (110, 30), (140, 140), (12, 12))


@pytest.fixture(autouse=True)
def small_limits(monkeypatch, tmp_path):
    """Small streaming limits, and this test's own folder for the streamed zarr arrays."""
    from napari_instance_tuner.core.inference.streaming import StreamSettings
    from napari_instance_tuner.widgets import _streamed
    from napari_instance_tuner.widgets import segment as module

    monkeypatch.setattr(module, "STREAM_PIXELS", 64 * 64)
    monkeypatch.setattr(module, "STREAM_SETTINGS", StreamSettings(**SETTINGS))
    monkeypatch.setattr(module, "PYRAMID_MIN_SIZE", 32)
    folder = tmp_path / "streams"
    folder.mkdir()
    monkeypatch.setattr(_streamed, "_DIR", folder)
    return folder


@pytest.fixture
def maps_from_image(monkeypatch, predict_calls):
    """The network still runs on every window, but post-processing gets maps read from the (normalised) window:
    foreground = its first channel, no boundaries, centroids everywhere."""
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily
    from napari_instance_tuner.core.family import Maps

    network = ThreeBranchFamily.predict_maps

    def from_image(self, model, image, meta, **kwargs):
        yield from network(self, model, image, meta, **kwargs)
        fg = np.clip(np.asarray(image, np.float32)[..., 0], 0, 1)
        return Maps(arrays={"foreground": fg, "boundary": np.zeros_like(fg), "centroid": np.ones_like(fg)})

    monkeypatch.setattr(ThreeBranchFamily, "predict_maps", from_image)
    return predict_calls


def _rgb(size=SIZE) -> np.ndarray:
    """uint8 (size, size, 3): bright disks (:data:`DISKS` inside the image) on a dark background."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 20, np.uint8)
    for cy, cx in DISKS:
        if cy < size and cx < size:
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = 200
    return image


def _use_disk_params(widget):
    """Controls that turn the disk maps into one object per disk."""
    import dataclasses

    widget.params.set_values(dataclasses.replace(
        widget.params.params(), fg_threshold=0.5, subtract_boundaries=False, require_centroid=False, min_size=20,
        close_radius=0, open_radius=0, grow_back=0))


def _direct(widget, image, params=None):
    """What ``stream_segment`` gives for ``image`` with the widget's model, parameters and stream settings."""
    from napari_instance_tuner.core.inference.streaming import StreamSettings, stream_segment
    from napari_instance_tuner.core.progress import run

    params = widget.params.params() if params is None else params
    return run(stream_segment(widget.models.loaded, image, params, settings=StreamSettings(**SETTINGS),
                              device="cpu"))


def _info(layer) -> dict:
    from napari_instance_tuner.widgets._layers import TAG

    return layer.metadata[TAG]


def test_a_large_image_is_streamed_into_a_multiscale_labels_layer(loaded, viewer, run, errors, maps_from_image):
    import zarr

    from napari_instance_tuner.core.params import params_to_dict

    widget = loaded
    rgb = _rgb()
    image = viewer.add_image(rgb, name="big slide", rgb=True, scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget.image.value = image
    assert "Run streams it tile by tile" in widget.note.value  # said before the run
    _use_disk_params(widget)
    params = widget.params.params()
    assert run(widget) == "ok", errors
    assert errors == []
    windows = list(maps_from_image)

    layer = viewer.layers["big slide instances"]
    assert layer.multiscale
    assert [tuple(level.shape) for level in layer.data] == [(160, 160), (80, 80), (40, 40), (20, 20)]
    expected = _direct(widget, rgb, params)
    assert expected.tiles == 9 and expected.count == len(DISKS)  # disks on seams were stitched into one each
    for k, level in enumerate(layer.data):
        np.testing.assert_array_equal(np.asarray(level), expected.labels[:: 2**k, :: 2**k])
    np.testing.assert_array_equal(layer.scale, image.scale)
    np.testing.assert_array_equal(layer.translate, image.translate)
    # Every tile went through the network, one window (core + halo) at a time; no maps were cached.
    assert len(windows) == 9 and max(max(shape[:2]) for shape in windows) <= 64 + 2 * 16
    assert [lyr.name for lyr in viewer.layers] == ["big slide", "big slide instances"]
    assert widget.current_session is None and widget.sessions.labels_layer(image) is layer
    assert widget.sessions.get(image).streamed is not None

    info = _info(layer)
    assert info["streamed"] is True and info["role"] == "instances"
    assert info["params"] == params_to_dict(params) and info["model"] == widget.models.loaded.name
    assert info["image_name"] == "big slide" and info["image_shape"] == [160, 160, 3]
    assert info["streaming"] == {**SETTINGS, "amp": False} and info["tiles"] == 9
    path = Path(info["zarr_path"])
    assert path.exists() and path.suffix == ".zarr" and path.name.startswith("big_slide")
    # The levels were written once, in the worker, as arrays "0", "1", ... of the run's zarr group: the layer
    # shows those stored arrays (drawing a small level reads only that level), not strided views of level 0.
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2", "3"]
    for k, level in enumerate(layer.data):
        assert isinstance(level, zarr.Array) and level.shape == group[str(k)].shape
        assert Path(level.store.root) == path and level.path == str(k)
        np.testing.assert_array_equal(group[str(k)][:], expected.labels[:: 2**k, :: 2**k])

    assert widget.count.value == str(expected.count) == str(len(np.unique(expected.labels[expected.labels > 0])))
    assert widget.note.value == "large image: streamed in 9 tiles; parameter changes apply on the next Run"
    assert widget.device_used.value.startswith("ran on CPU")
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_a_multiscale_image_is_streamed_from_its_largest_level(loaded, viewer, run, errors, monkeypatch,
                                                               maps_from_image):
    from napari_instance_tuner.widgets import segment as module

    monkeypatch.setattr(module, "STREAM_PIXELS", 4096 * 4096)  # multiscale alone decides
    rgb = _rgb(96)
    image = viewer.add_image([rgb, rgb[::2, ::2]], name="pyramid", rgb=True, multiscale=True)
    loaded.image.value = image
    _use_disk_params(loaded)
    assert run(loaded) == "ok", errors
    layer = viewer.layers["pyramid instances"]
    # 96 px is below the pyramid's 32 px floor only after 2 halvings; at least 2 levels in any case
    assert layer.multiscale and [tuple(lv.shape) for lv in layer.data] == [(96, 96), (48, 48), (24, 24)]
    expected = _direct(loaded, rgb)
    assert expected.tiles == 4 and expected.count == 4  # the disks centred inside 96 x 96
    np.testing.assert_array_equal(np.asarray(layer.data[0]), expected.labels)
    assert loaded.count.value == str(expected.count)
    assert "streamed in 4 tiles" in loaded.note.value


def test_sliders_do_not_post_process_a_streamed_image(loaded, viewer, qtbot, run, postprocess_calls, errors,
                                                      maps_from_image):
    widget = loaded
    rgb = _rgb()
    widget.image.value = viewer.add_image(rgb, name="big", rgb=True)
    _use_disk_params(widget)
    assert run(widget) == "ok", errors
    assert widget.count.value == str(len(DISKS))
    layer = viewer.layers["big instances"]
    first = np.asarray(layer.data[0]).copy()
    first_path = _info(layer)["zarr_path"]
    calls = len(postprocess_calls)

    widget.params.controls["min_size"].value = 5000  # larger than any disk
    qtbot.waitUntil(lambda: not widget.params.pending, timeout=5_000)
    qtbot.wait(50)
    assert widget._pp_job is None and not widget.busy and len(postprocess_calls) == calls
    assert "parameter changes apply on the next Run" in widget.note.value
    assert "made with other values" in widget.note.value
    np.testing.assert_array_equal(np.asarray(layer.data[0]), first)  # the labels shown are untouched

    params = widget.params.params()
    assert run(widget) == "ok", errors  # Run applies the new values
    assert viewer.layers["big instances"] is layer  # the plugin's own unedited layer is replaced in place
    info = _info(layer)
    assert info["params"]["min_size"] == 5000 and info["zarr_path"] != first_path
    assert Path(first_path).exists()  # a new array per run: the old one may still be shown elsewhere
    np.testing.assert_array_equal(np.asarray(layer.data[0]), _direct(widget, rgb, params).labels)
    assert not np.asarray(layer.data[0]).any() and widget.count.value == "0"
    assert "other values" not in widget.note.value


def test_an_image_below_the_limit_keeps_cached_maps(loaded, viewer, qtbot, run, errors):
    small = _rgb(96)[:48, :64]  # 3072 pixels <= 64 * 64
    loaded.image.value = viewer.add_image(small, name="small", rgb=True)
    assert run(loaded) == "ok", errors
    labels = viewer.layers["small instances"]
    assert not labels.multiscale and labels.data.shape == (48, 64)
    assert "small foreground" in viewer.layers and loaded.current_session is not None
    assert loaded.current_session.streamed is None
    assert loaded.note.value == ""
    with qtbot.waitSignal(loaded.labels_updated, timeout=10_000):  # the sliders still post-process
        loaded.params.controls["fg_threshold"].value = 1.0
    assert not labels.data.any()


def test_cancel_stops_a_streamed_run_and_leaves_nothing(loaded, viewer, qtbot, slow_network, small_limits):
    widget = loaded
    widget.image.value = viewer.add_image(_rgb(), name="big", rgb=True)
    with qtbot.waitSignal(widget.run_finished, timeout=30_000) as blocker:
        widget.run()
        assert widget.cancel_button.enabled
        qtbot.wait(150)
        widget.cancel()
    assert blocker.args == ["cancelled"]
    assert len(slow_network) < 9  # stopped before the last tile
    assert [lyr.name for lyr in viewer.layers] == ["big"] and widget.sessions.segmented() == []
    assert list(small_limits.iterdir()) == []  # the half-written array was deleted
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_a_failing_streamed_run_gives_a_notification(loaded, viewer, run, errors, small_limits):
    image = np.random.default_rng(0).random((SIZE, SIZE, 2)).astype(np.float32)  # 2 channels: no model takes it
    loaded.image.value = viewer.add_image(image, name="two channels")
    assert run(loaded) == "error"
    assert len(errors) == 1 and errors[0].startswith("segmentation failed") and "2 channels" in errors[0]
    assert [lyr.name for lyr in viewer.layers] == ["two channels"] and loaded.run_button.enabled
    assert list(small_limits.iterdir()) == []


def test_replaced_streamed_labels_are_kept_on_rerun(loaded, viewer, run, errors):
    widget = loaded
    widget.image.value = viewer.add_image(_rgb(), name="big", rgb=True)
    assert run(widget) == "ok", errors
    mine = viewer.layers["big instances"]
    mine.data = [np.full((SIZE, SIZE), 7, np.uint32), np.full((SIZE // 2, SIZE // 2), 7, np.uint32)]
    assert run(widget) == "ok", errors
    assert mine.name == "big instances (edited)" and np.all(np.asarray(mine.data[0]) == 7)
    assert "napari_instance_tuner" not in mine.metadata
    fresh = viewer.layers["big instances"]
    assert fresh is not mine and fresh.multiscale and _info(fresh)["streamed"] is True


def test_closing_a_streamed_image_forgets_it(loaded, viewer, run, errors):
    image = viewer.add_image(_rgb(), name="big", rgb=True)
    loaded.image.value = image
    assert run(loaded) == "ok", errors
    viewer.layers.remove(image)
    assert loaded.sessions.segmented() == [] and loaded.count.value == "–" and loaded.note.value == ""
    assert "big instances" in viewer.layers  # the labels stay


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the slide layer's dask levels hold the file open
def test_a_slide_opened_by_the_reader_is_segmented_at_the_model_pixel_size(segment, viewer, run, errors, qtbot,
                                                                          maps_from_image, tmp_path, tiny_arch,
                                                                          tiny_meta):
    """A 0.25 µm/px slide and a 0.5 µm/px model: level 0 is read, halved, and the labels land on the slide."""
    import torch

    from napari_instance_tuner.core.io.checkpoint import save_checkpoint
    from napari_instance_tuner.core.io.slides import write_svs
    from napari_instance_tuner.core.registry import get_family

    torch.manual_seed(0)
    state = get_family("three-branch").build_model(tiny_arch).state_dict()
    model = save_checkpoint(tmp_path / "half.safetensors", state, tiny_meta(pixel_size_um=0.5))
    segment.load_weights(model)
    qtbot.waitUntil(lambda: segment.models.loaded is not None and not segment.busy, timeout=20000)
    rgb = np.repeat(np.repeat(_rgb(), 2, axis=0), 2, axis=1)  # the disks scanned at twice the resolution
    path = write_svs(tmp_path / "slide.svs", rgb, pixel_size_um=0.25, levels=2, tile=64)
    (image,) = viewer.open(str(path), plugin="napari-instance-tuner")
    assert image.multiscale and image.data[0].shape == (320, 320, 3)
    np.testing.assert_allclose(image.scale, (0.25, 0.25))
    segment.image.value = image
    assert segment.pixel_info.value == "model 0.5 µm/px; image 0.25 µm/px: resampled 0.5x, labels in image pixels"
    _use_disk_params(segment)
    assert run(segment) == "ok", errors
    layer = viewer.layers["slide instances"]
    assert layer.multiscale and layer.data[0].shape == (160, 160)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    labels = np.asarray(layer.data[0])
    assert len(np.unique(labels[labels > 0])) == len(DISKS)
    for cy, cx in DISKS:  # every disk's label sits where the disk is on the slide, in world (µm) coordinates
        world = np.array([2 * cy + 0.5, 2 * cx + 0.5]) * 0.25
        assert labels[tuple(np.round(layer.world_to_data(world)).astype(int))] > 0
    viewer.layers.clear()
    del image, layer
    gc.collect()


def test_a_shapes_rectangle_limits_the_run_to_its_region(loaded, viewer, run, errors, maps_from_image):
    widget = loaded
    image = viewer.add_image(_rgb(), name="big slide", rgb=True, scale=(0.5, 0.5), translate=(10.0, 20.0))
    # A rectangle over pixel centres 20..80 (rows) and 40..150 (columns), drawn in world coordinates.
    box = np.array([[20, 40], [20, 150], [80, 150], [80, 40]], float) * 0.5 + (10.0, 20.0)
    shapes = viewer.add_shapes([box], shape_type="rectangle", name="roi")
    widget.image.value = image
    widget.region.value = shapes
    _use_disk_params(widget)
    assert run(widget) == "ok", errors
    layer = viewer.layers["big slide instances"]
    assert layer.data[0].shape == (61, 111)
    np.testing.assert_allclose(layer.translate, (10.0 + 20 * 0.5, 20.0 + 40 * 0.5))
    np.testing.assert_allclose(layer.scale, image.scale)
    labels = np.asarray(layer.data[0])
    whole = _direct(widget, _rgb()).labels[20:81, 40:151]
    inner = [k for k in np.unique(whole[whole > 0]) if not np.isin(k, np.concatenate(
        [whole[0], whole[-1], whole[:, 0], whole[:, -1]]))]
    assert inner and all((labels[whole == k] > 0).all() for k in inner)  # objects inside: found at their place
    assert (labels > 0).sum() <= (whole > 0).sum() + 50


def test_the_visible_field_limits_the_run_to_what_the_canvas_shows(loaded, viewer, run, errors, maps_from_image):
    from napari_instance_tuner.widgets._region import VISIBLE, canvas_size, visible_roi

    widget = loaded
    image = viewer.add_image(_rgb(), name="big slide", rgb=True, scale=(0.5, 0.5), translate=(10.0, 20.0))
    camera = viewer.scene.camera
    height, width = canvas_size(viewer)
    # Centre the camera on pixel (50, 90) and zoom so that the canvas spans 60 pixels (30 world units) in height.
    camera.center = (10.0 + 50 * 0.5, 20.0 + 90 * 0.5)
    camera.zoom = height / 30.0
    y, x, h, w = visible_roi(viewer, image)
    assert abs(h - 60) <= 1 and abs(y - 20) <= 1  # rows 20..80 around the centre row 50
    span = 2 * width / camera.zoom  # columns shown: 2 pixels per world unit
    x0, x1 = max(0.0, 90 - span / 2), min(float(SIZE), 90 + span / 2)  # clipped to the image
    assert abs(x - x0) <= 1 and abs(x + w - x1) <= 1
    widget.image.value = image
    widget.region.value = VISIBLE
    _use_disk_params(widget)
    assert run(widget) == "ok", errors
    layer = viewer.layers["big slide instances"]
    assert layer.data[0].shape == (h, w)
    np.testing.assert_allclose(layer.translate, (10.0 + y * 0.5, 20.0 + x * 0.5))
    camera.center = (-500.0, -500.0)  # looking beside the image: no region, the whole image is used
    assert visible_roi(viewer, image) is None

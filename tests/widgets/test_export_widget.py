"""The Export widget in a real viewer, the npe2 writers, and the recipe written for Segment's labels."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000
TAG = "napari_instance_tuner"


def _labels() -> np.ndarray:
    labels = np.zeros((64, 96), np.uint16)
    labels[2:6, 10:20] = 1
    labels[10:40, 5:35] = 2
    labels[20:30, 15:25] = 0  # a hole
    labels[10:40, 35:60] = 3  # touches object 2
    return labels


class Asked(list):
    """The file lists the widget asked about; every question gets ``answer`` (default: keep the files)."""

    answer = False


@pytest.fixture
def asked() -> Asked:
    return Asked()


@pytest.fixture
def export(viewer, qtbot, errors, asked, tmp_path):
    """The Export widget docked in a viewer, writing into ``tmp_path``, with a scripted overwrite answer."""
    from napari_instance_tuner.widgets.export import ExportWidget

    def confirm(paths):
        asked.append(paths)
        return asked.answer

    widget = ExportWidget(viewer, confirm_overwrite=confirm)
    viewer.window.add_dock_widget(widget, name="Export")
    widget.folder.value = str(tmp_path)
    yield widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


@pytest.fixture
def press(qtbot):
    """``press(widget)`` clicks Export and returns how it ended: "ok", "error" or "declined"."""

    def press_and_wait(widget) -> str:
        with qtbot.waitSignal(widget.export_finished, timeout=TIMEOUT_MS) as blocker:
            widget.export_button.native.click()
        return blocker.args[0]

    return press_and_wait


def _select(widget, **formats) -> None:
    for fmt, box in widget.formats.items():
        box.value = formats.get(fmt, False)


def test_exports_every_format_with_intensities_and_pixel_size(viewer, export, press, errors, tmp_path):
    image = np.zeros((64, 96, 3), np.uint8)
    image[..., 1] = 50
    viewer.add_image(image, name="img", rgb=True)
    viewer.add_labels(_labels(), name="img instances", scale=(0.5, 0.5))
    export.labels.value = viewer.layers["img instances"]
    export.image.value = viewer.layers["img"]
    assert export.base_name.value == "img instances"  # follows the layer's name
    _select(export, tiff=True, png=True, csv=True, geojson=True, masks=True)
    export.object_type.value = "annotation"
    export.classification.value = "Gland"
    assert press(export) == "ok", errors
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"img instances{s}" for s in (".tif", ".png", ".csv", ".geojson", "_masks.npz"))
    with tifffile.TiffFile(tmp_path / "img instances.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), _labels())
        assert tif.pages[0].tags["XResolution"].value == (2, 1) and tif.imagej_metadata["unit"] == "um"
    with open(tmp_path / "img instances.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["1", "2", "3"] and {r["mean_intensity_ch1"] for r in rows} == {"50.0"}
    features = json.loads((tmp_path / "img instances.geojson").read_text())["features"]
    assert [f["properties"]["objectType"] for f in features] == ["annotation"] * 3
    assert features[1]["properties"]["classification"]["name"] == "Gland"  # with the colour QuPath requires
    assert features[1]["properties"]["measurements"]["Area µm^2"] == pytest.approx(
        features[1]["properties"]["measurements"]["area"] * 0.25)
    assert len(features[1]["geometry"]["coordinates"]) == 2  # exterior + the hole
    assert "wrote" in export.status.value and errors == []


def test_existing_files_are_replaced_only_with_consent(viewer, export, press, asked, tmp_path):
    viewer.add_labels(_labels(), name="cells")
    _select(export, tiff=True, csv=True)
    (tmp_path / "cells.csv").write_text("keep me")
    assert press(export) == "declined"
    assert asked == [[tmp_path / "cells.csv"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv"]  # nothing written, nothing replaced
    assert (tmp_path / "cells.csv").read_text() == "keep me"
    asked.answer = True
    assert press(export) == "ok"
    assert (tmp_path / "cells.csv").read_text().startswith("label,") and (tmp_path / "cells.tif").is_file()
    assert len(asked) == 2


def test_problems_are_notifications_not_tracebacks(viewer, export, press, errors, tmp_path):
    assert press(export) == "error"
    assert errors[-1].startswith("no Labels layer")
    viewer.add_labels(_labels().astype(np.uint32) * 70_000, name="many")
    export.folder.value = str(tmp_path / "missing")
    assert press(export) == "error" and "does not exist" in errors[-1]
    export.folder.value = str(tmp_path)
    _select(export, png=True)
    assert press(export) == "error"  # fails in the background job: too many labels for PNG
    assert errors[-1].startswith("export failed:") and "65535" in errors[-1]
    assert list(tmp_path.iterdir()) == [] and not export.busy and export.export_button.enabled


def _segment_info(checkpoint: Path, image: np.ndarray, params) -> dict:
    """The metadata contract the Segment widget writes on its Labels layer."""
    from napari_instance_tuner.core.io.checkpoint import file_sha256
    from napari_instance_tuner.core.params import params_to_dict

    return {"role": "instances", "weights_path": str(checkpoint), "weights_sha256": file_sha256(checkpoint),
            "family": "three-branch", "params": params_to_dict(params), "device": "cpu", "tile_size": None,
            "image_name": "img", "image_shape": list(image.shape)}


def test_recipe_is_written_for_segment_labels_and_replays_them(viewer, export, press, errors, tmp_path,
                                                               tiny_checkpoint):
    from dataclasses import replace

    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.io.recipe import load_recipe, replay
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.core.synthetic import synthetic_glands

    rgb, _ = synthetic_glands((64, 96), seed=0)
    loaded = load_model(tiny_checkpoint)
    maps = run(loaded.family.predict_maps(loaded.model, rgb, loaded.meta, device="cpu"))
    threshold = float(np.median(maps.arrays["foreground"]))  # random weights: about half the pixels
    params = replace(loaded.family.default_params(loaded.meta), fg_threshold=threshold, require_centroid=False,
                     subtract_boundaries=False, min_size=3, open_radius=0, close_radius=0)
    labels = loaded.family.postprocess(maps, params).labels
    assert labels.max() >= 3
    viewer.add_image(rgb, name="img", rgb=True)
    viewer.add_labels(labels, name="img instances", metadata={TAG: _segment_info(tiny_checkpoint, rgb, params)})
    viewer.add_labels(labels, name="hand made")
    export.labels.value = viewer.layers["img instances"]
    assert export.image.value is viewer.layers["img"]  # picked from the metadata's image name
    _select(export, tiff=True)
    assert press(export) == "ok", errors
    recipe = load_recipe(tmp_path / "img instances.recipe.json")
    assert recipe["weights"]["sha256"] == loaded.sha256 and recipe["image"] == {"name": "img", "shape": [64, 96, 3]}
    np.testing.assert_array_equal(replay(recipe, rgb), tifffile.imread(tmp_path / "img instances.tif"))
    export.labels.value = viewer.layers["hand made"]
    assert press(export) == "ok"
    assert not (tmp_path / "hand made.recipe.json").exists()  # no run to record


def test_segment_widget_result_equals_its_replayed_recipe(with_image, viewer, run, qtbot, tmp_path, errors):
    """Acceptance: the Segment widget's labels and ``predict --recipe`` agree pixel for pixel (CPU)."""
    from napari_instance_tuner.core.io.recipe import LAYER_KEYS, load_recipe, replay
    from napari_instance_tuner.widgets.export import ExportWidget

    with_image.device.value = "cpu"
    assert run(with_image) == "ok", errors
    layer = viewer.layers["img instances"]
    info = layer.metadata.get(TAG, {})
    assert [key for key in LAYER_KEYS if key not in info] == []  # the Segment widget records its run
    widget = ExportWidget(viewer, confirm_overwrite=lambda paths: True)
    widget.labels.value = layer
    widget.folder.value = str(tmp_path)
    with qtbot.waitSignal(widget.export_finished, timeout=TIMEOUT_MS) as blocker:
        widget.export()
    assert blocker.args[0] == "ok", errors
    recipe = load_recipe(tmp_path / "img instances.recipe.json")
    np.testing.assert_array_equal(replay(recipe, viewer.layers["img"].data), layer.data)


# -- streamed labels (large images) ------------------------------------------------------------------------


@pytest.fixture
def streamed(loaded, viewer, run, errors, monkeypatch, tmp_path):
    """The Segment widget after a streamed run on a 96 x 80 RGB image (streaming limits made small)."""
    from napari_instance_tuner.core.inference.streaming import StreamSettings
    from napari_instance_tuner.widgets import _streamed
    from napari_instance_tuner.widgets import segment as module

    monkeypatch.setattr(module, "STREAM_PIXELS", 32 * 32)
    monkeypatch.setattr(module, "STREAM_SETTINGS", StreamSettings(tile=32, halo=16))
    monkeypatch.setattr(module, "PYRAMID_MIN_SIZE", 16)
    (tmp_path / "streams").mkdir()
    monkeypatch.setattr(_streamed, "_DIR", tmp_path / "streams")
    rgb = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    loaded.image.value = viewer.add_image(rgb, name="slide", rgb=True)
    loaded.device.value = "cpu"
    params = loaded.params.params()
    loaded.params.set_values(replace(params, fg_threshold=float(np.median(_foreground(loaded, rgb))),
                                     require_centroid=False, subtract_boundaries=False, min_size=3, open_radius=0,
                                     close_radius=0))
    assert run(loaded) == "ok", errors
    assert viewer.layers["slide instances"].multiscale
    return loaded


def _foreground(segment, rgb) -> np.ndarray:
    from napari_instance_tuner.core.progress import run

    loaded = segment.models.loaded
    return run(loaded.family.predict_maps(loaded.model, rgb, loaded.meta, device="cpu")).arrays["foreground"]


def test_streamed_labels_export_tile_by_tile_with_the_streaming_recipe(streamed, viewer, export, press, errors,
                                                                       tmp_path, monkeypatch):
    import threading

    import zarr

    from napari_instance_tuner.core.inference.streaming import StreamSettings, stream_segment
    from napari_instance_tuner.core.io import export as core_export
    from napari_instance_tuner.core.io.recipe import load_recipe, recipe_model, recipe_params
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.widgets import export as export_widget

    layer = viewer.layers["slide instances"]
    level0 = zarr.open_group(layer.metadata[TAG]["zarr_path"], mode="r")["0"][:]
    assert level0.max() >= 3  # some objects to export
    export.labels.value = layer
    _select(export, tiff=True)
    # 16 px TIFF tiles, and every read of the labels in the export's worker is recorded.
    monkeypatch.setattr(core_export, "write_label_tiff_tiles",
                        partial(core_export.write_label_tiff_tiles, tile=16))
    reads, get = [], zarr.Array.__getitem__

    def reading(self, key):
        block = get(self, key)
        if threading.current_thread() is not threading.main_thread():
            reads.append(np.size(block))
        return block

    handed = []  # what the widget gives the core export: level 0 itself, not a NumPy copy of it

    def exporting(labels, options, **kwargs):
        handed.append(labels)
        return core_export.export_instances(labels, options, **kwargs)

    monkeypatch.setattr(zarr.Array, "__getitem__", reading)
    monkeypatch.setattr(export_widget, "export_instances", exporting)
    assert press(export) == "ok", errors
    monkeypatch.undo()
    assert len(handed) == 1 and isinstance(handed[0], zarr.Array) and handed[0].shape == level0.shape
    assert reads and max(reads) <= 16 * 16  # tile by tile, never the whole array
    with tifffile.TiffFile(tmp_path / "slide instances.tif") as tif:
        assert tif.pages[0].is_tiled and (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (16, 16)
        np.testing.assert_array_equal(tif.asarray(), level0)
    recipe = load_recipe(tmp_path / "slide instances.recipe.json")
    assert recipe["streaming"] == {"tile": 32, "halo": 16, "amp": False}
    assert recipe["image"] == {"name": "slide", "shape": [96, 80, 3]}
    # The recorded settings are what it takes to make the same labels again, headless.
    loaded = recipe_model(recipe)
    again = run(stream_segment(loaded, viewer.layers["slide"].data, recipe_params(recipe, loaded),
                               settings=StreamSettings(**recipe["streaming"]), device="cpu"))
    np.testing.assert_array_equal(again.labels, level0)


def test_streamed_labels_too_large_for_memory_refuse_other_formats(streamed, viewer, export, press, errors,
                                                                   tmp_path, monkeypatch):
    from napari_instance_tuner.core.io import export as core_export

    monkeypatch.setattr(core_export, "MAX_IN_MEMORY_PIXELS", 96 * 80 - 1)
    export.labels.value = viewer.layers["slide instances"]
    _select(export, tiff=True, csv=True)
    assert press(export) == "error"
    assert errors[-1].startswith("export failed: measurements (CSV) needs the whole label image in memory")
    assert "export the label image (TIFF), which is written tile by tile" in errors[-1]
    assert not any(p.name.startswith("slide") for p in tmp_path.iterdir())  # nothing written
    _select(export, tiff=True)
    assert press(export) == "ok", errors
    assert (tmp_path / "slide instances.tif").is_file()


# -- npe2 writers --------------------------------------------------------------------------------------


def test_writers_write_what_napari_hands_them(tmp_path):
    import imageio.v3 as iio

    from napari_instance_tuner import _writers

    labels = _labels()
    attributes = {"scale": (2.0, 2.0), "units": ("micrometer", "micrometer"), "name": "x"}
    assert _writers.pixel_size(attributes) == ((2.0, 2.0), "µm")
    assert _writers.pixel_size({"scale": (1.0, 1.0), "units": ("pixel", "pixel")}) == (None, "µm")
    (tif,) = _writers.write_labels_tiff(str(tmp_path / "a.tif"), labels, attributes)
    np.testing.assert_array_equal(tifffile.imread(tif), labels)
    (png,) = _writers.write_labels_png(str(tmp_path / "a.png"), labels, attributes)
    np.testing.assert_array_equal(iio.imread(png), labels)
    (table,) = _writers.write_labels_csv(str(tmp_path / "a.csv"), labels, attributes)
    assert Path(table).read_text().splitlines()[0].startswith("label,area,perimeter")
    (geo,) = _writers.write_labels_geojson(str(tmp_path / "a.geojson"), labels, attributes)
    assert [f["properties"]["objectType"] for f in json.loads(Path(geo).read_text())["features"]] == ["detection"] * 3
    # napari's save dialog has already asked: writers replace files.
    assert _writers.write_labels_png(str(tmp_path / "a.png"), labels[::-1], attributes) == [png]
    np.testing.assert_array_equal(iio.imread(png), labels[::-1])


def test_manifest_declares_the_writers_and_the_widget():
    npe2 = pytest.importorskip("npe2")
    from napari_instance_tuner import _writers

    manifest = npe2.PluginManifest.from_file(Path(__file__).resolve().parents[2] / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    writers = {tuple(w.filename_extensions): commands[w.command] for w in manifest.contributions.writers}
    assert writers == {
        (".tif", ".tiff"): "napari_instance_tuner._writers:write_labels_tiff",
        (".png",): "napari_instance_tuner._writers:write_labels_png",
        (".csv",): "napari_instance_tuner._writers:write_labels_csv",
        (".geojson",): "napari_instance_tuner._writers:write_labels_geojson",
    }
    assert all(w.layer_types == ["labels"] for w in manifest.contributions.writers)
    assert all(callable(getattr(_writers, name.split(":")[1])) for name in writers.values())
    export = [w for w in manifest.contributions.widgets if w.display_name == "Export"]
    assert [commands[w.command] for w in export] == ["napari_instance_tuner.widgets.export:ExportWidget"]

"""Slides segmented at the model's pixel size: 40x and 20x slides by the 20x gland model find the objects of
the same tissue segmented by hand at the model's scale, in level-0 coordinates; regions; output formats."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from napari_instance_tuner.core.inference.slide_segment import (
    open_source,
    parse_roi,
    segment_at_model_scale,
    segment_file,
    write_outputs,
)
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.io.geojson import objects_to_labels, read_geojson
from napari_instance_tuner.core.io.slides import write_svs
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.synthetic import synthetic_glands

CHECKER = Path(__file__).resolve().parents[1] / "tools" / "qupath_geojson_check.py"
MODEL_UM = 0.62  # the GlaS model's training pixel size (its model card)


@pytest.fixture(scope="module")
def glas():
    loaded = load_model("three-branch-glas")
    assert loaded.meta["pixel_size_um"] == MODEL_UM
    return loaded, loaded.family.Params(**loaded.meta["postprocess"])


@pytest.fixture(scope="module")
def tissue():
    rgb, _ = synthetic_glands((320, 384), seed=3)
    return rgb


def _slide(folder: Path, rgb: np.ndarray, um: float, name: str) -> Path:
    """The tissue (at the model's 0.62 µm/px) scanned at ``um`` µm/px: upsampled, as a 3-level SVS."""
    f = MODEL_UM / um
    size = (round(rgb.shape[1] * f), round(rgb.shape[0] * f))
    return write_svs(folder / name, cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC), um, round(20 * 0.5 / um))


def object_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """F1 of objects matched at IoU > 0.5 (a match at IoU > 0.5 is unique)."""
    pairs = np.stack([pred.ravel(), ref.ravel()], 1).astype(np.int64)
    both = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
    keys, inter = np.unique(both, axis=0, return_counts=True)
    area_p = np.bincount(pred.ravel().astype(np.int64))
    area_r = np.bincount(ref.ravel().astype(np.int64))
    iou = inter / (area_p[keys[:, 0]] + area_r[keys[:, 1]] - inter)
    tp = int((iou > 0.5).sum())
    n_pred, n_ref = np.count_nonzero(area_p[1:]), np.count_nonzero(area_r[1:])
    return 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0


@pytest.fixture(scope="module")
def reference(glas, tissue) -> np.ndarray:
    """The tissue segmented as a plain image at the model's scale."""
    return _reference(glas, tissue)


def _reference(glas, rgb) -> np.ndarray:
    loaded, params = glas
    maps = run(loaded.family.predict_maps(loaded.model, rgb, loaded.meta, device="cpu"))
    return loaded.family.postprocess(maps, params).labels


@pytest.mark.parametrize("um", [0.25, 0.5])  # 40x and 20x
def test_slide_at_other_magnification_finds_the_objects_of_the_model_scale(glas, tissue, reference, tmp_path, um):
    loaded, params = glas
    assert reference.max() >= 5
    path = _slide(tmp_path, tissue, um, "case.svs")
    result = run(segment_file(loaded, path, params, tmp_path, "case", formats=["geojson"], device="cpu"))
    assert result.frame.factor == pytest.approx(MODEL_UM / um, rel=0.01) and result.frame.pixel_size_um == um
    geo = tmp_path / "case.geojson"
    objects = read_geojson(geo)
    # Level-0 coordinates: rasterised at the model's scale they lie over the reference's objects.
    found = objects_to_labels(objects, None, MODEL_UM / um)[: reference.shape[0], : reference.shape[1]]
    padded = np.zeros_like(reference)
    padded[: found.shape[0], : found.shape[1]] = found
    assert object_f1(padded, reference) >= 0.9
    with tifffile.TiffFile(path) as tif:
        slide_h, slide_w = tif.pages[0].shape[:2]
    checked = subprocess.run([sys.executable, str(CHECKER), str(geo), "--width", str(slide_w), "--height",
                              str(slide_h)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout


def test_roi_results_are_in_level0_coordinates(glas, tissue, tmp_path):
    loaded, params = glas
    path = _slide(tmp_path, tissue, 0.25, "case.svs")
    source = open_source(path)
    full = run(segment_at_model_scale(loaded, source, params, device="cpu"))
    full_dir, roi_dir = tmp_path / "full", tmp_path / "roi"
    full_dir.mkdir(), roi_dir.mkdir()
    run(write_outputs(full, ["tif"], full_dir, "case"))
    roi = parse_roi("200,150,500,400")  # X,Y,W,H -> (y, x, h, w)
    assert roi == (150, 200, 400, 500)
    part = run(segment_at_model_scale(loaded, source, params, roi=roi, device="cpu"))
    run(write_outputs(part, ["tif", "geojson"], roi_dir, "case"))  # reads the slide (intensities)
    source.close()
    ring_x = [p[0] for f in json.loads((roi_dir / "case.geojson").read_text())["features"]
              for ring in (f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon"
                           else [r for poly in f["geometry"]["coordinates"] for r in poly]) for p in ring]
    assert ring_x and 200 <= min(ring_x) and max(ring_x) <= 700
    whole = tifffile.imread(full_dir / "case.tif")
    crop = tifffile.imread(roi_dir / "case.tif")
    assert crop.shape == (400, 500) and whole.shape == source.shape
    window = whole[150:550, 200:700]
    border = np.unique(np.concatenate([window[0], window[-1], window[:, 0], window[:, -1]]))
    inside = np.where(np.isin(window, border), 0, window)  # the full run's objects wholly inside the region
    assert inside.max() > 0
    matched = [np.logical_and(crop > 0, inside == k).sum() / (inside == k).sum() for k in np.unique(inside[inside > 0])]
    assert np.mean(np.asarray(matched) > 0.8) >= 0.8  # found again, at the same level-0 place


def test_every_format_in_level0_pixels(glas, tissue, tmp_path):
    zarr = pytest.importorskip("zarr")
    loaded, params = glas
    path = _slide(tmp_path, tissue, 0.25, "case.svs")
    result = run(segment_file(loaded, path, params, tmp_path, "case", formats=["tif", "zarr", "geojson", "csv"],
                              device="cpu"))
    assert [p.name for p in result.written] == ["case.tif", "case.zarr", "case.geojson", "case.csv"]
    with tifffile.TiffFile(tmp_path / "case.tif") as tif:
        labels = tif.asarray()
        assert labels.shape == (round(320 * MODEL_UM / 0.25), round(384 * MODEL_UM / 0.25)) and tif.is_ome
        assert "PhysicalSizeX=\"0.25\"" in tif.ome_metadata
    group = zarr.open_group(str(tmp_path / "case.zarr"), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5" and "image-label" in ome
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets[:2]] == [[0.25, 0.25], [0.5, 0.5]]
    assert ome["multiscales"][0]["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}
    assert np.array_equal(group["0"][:], labels) and group["1"].shape == tuple(-(-n // 2) for n in labels.shape)
    with open(tmp_path / "case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.count == len(read_geojson(tmp_path / "case.geojson"))
    areas = {int(r["label"]): float(r["area"]) for r in rows}
    for label, area in list(areas.items())[:3]:  # level-0 pixel areas, to within the resampling of edges
        assert area == pytest.approx((labels == label).sum(), rel=0.05)
    assert float(rows[0]["area_um2"]) == pytest.approx(float(rows[0]["area"]) * 0.0625)


def test_ome_zarr_labels_open_with_ome_zarr_py(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    from napari_instance_tuner.core.io.ome_zarr import write_label_group

    lab = np.zeros((300, 500), np.uint32)
    lab[10:60, 20:90] = 4
    run(write_label_group(tmp_path / "l.zarr", lab, 0.5, chunk=128))
    (node,) = list(Reader(parse_url(str(tmp_path / "l.zarr")))())
    assert any(isinstance(spec, Label) for spec in node.specs)
    assert [tuple(d.shape) for d in node.data] == [(300, 500), (150, 250)]
    assert np.array_equal(np.asarray(node.data[0]), lab)

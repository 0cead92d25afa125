"""Exports: label TIFF/PNG round trips, measurement CSV values, QuPath GeoJSON geometry, safe writes."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tifffile

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.io import export as ex
from napari_instance_tuner.core.io import safe_write
from napari_instance_tuner.core.io.geojson import class_color
from napari_instance_tuner.core.io.polygons import mask_polygons, rasterise, signed_area


def synthetic_labels() -> np.ndarray:
    """Five objects on 48 x 64: a square, a ring (hole), two touching rectangles, a diagonal pair of pixels."""
    labels = np.zeros((48, 64), np.uint16)
    labels[2:6, 10:20] = 1  # rows 2..5, cols 10..19: 40 px
    labels[10:30, 2:22] = 2
    labels[15:22, 8:14] = 0  # a 7 x 6 hole in object 2
    labels[10:20, 30:40] = 3
    labels[10:20, 40:52] = 4  # touches object 3 along a whole side
    labels[40, 40] = labels[41, 41] = 5  # two pixels meeting only at a corner
    return labels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- label images ---------------------------------------------------------------------------------------


def test_label_tiff_round_trip_with_pixel_size(tmp_path):
    labels = synthetic_labels()
    path = ex.write_label_tiff(tmp_path / "a.tif", labels, pixel_size=(0.25, 0.5))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.imagej_metadata["unit"] == "um"
        x_res, y_res = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(2.0) and y_res[0] / y_res[1] == pytest.approx(4.0)
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_large_labels_go_to_uint32_ome_tiff(tmp_path):
    labels = synthetic_labels().astype(np.int64) * 20_000  # up to 100_000: does not fit uint16
    assert ex.label_dtype(labels) is np.uint32 and ex.label_dtype(np.array([[0, 65536]])) is np.uint32
    assert ex.label_dtype(np.array([[0, 65535]])) is np.uint16
    path = ex.write_label_tiff(tmp_path / "big.tif", labels, pixel_size=(0.5, 0.5))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].dtype == np.uint32 and tif.is_ome
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        np.testing.assert_array_equal(tif.asarray(), labels)
    stack = np.stack([labels, labels[::-1]])
    np.testing.assert_array_equal(tifffile.imread(ex.write_label_tiff(tmp_path / "stack.tif", stack)), stack)


def test_png_is_16_bit_and_refuses_what_it_cannot_hold(tmp_path):
    import imageio.v3 as iio

    labels = synthetic_labels() * 1000
    back = iio.imread(ex.write_label_png(tmp_path / "a.png", labels))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(ex.ExportError, match="65535"):
        ex.write_label_png(tmp_path / "b.png", labels.astype(np.uint32) * 100)
    with pytest.raises(ex.ExportError, match="2D"):
        ex.write_label_png(tmp_path / "c.png", np.stack([labels, labels]))
    with pytest.raises(ex.ExportError, match="negative"):
        ex.write_label_tiff(tmp_path / "d.tif", -synthetic_labels().astype(np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# -- measurements ---------------------------------------------------------------------------------------


def test_csv_columns_and_hand_checked_values(tmp_path):
    labels = synthetic_labels()
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = 10
    image[2:6, 10:20, 1] = 200
    image[2, 10, 2] = 90  # one bright pixel in object 1's blue channel
    table = ex.measurements(labels, image, scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    rows = _read_csv(ex.write_measurements_csv(tmp_path / "m.csv", table))
    expected = ["label", "area", "perimeter", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
                "eccentricity", "solidity", "major_axis_length", "minor_axis_length"]
    expected += [f"{s}_intensity_ch{c}" for s in ("mean", "min", "max") for c in range(3)] + ["score"]
    assert list(rows[0]) == expected
    assert [int(r["label"]) for r in rows] == [1, 2, 3, 4, 5]
    square = {k: float(v) for k, v in rows[0].items()}
    assert square["area"] == 40 and (square["centroid_y"], square["centroid_x"]) == (3.5, 14.5)
    assert (square["bbox_y0"], square["bbox_x0"], square["bbox_y1"], square["bbox_x1"]) == (2, 10, 6, 20)
    assert square["solidity"] == 1.0 and square["score"] == 0.9
    assert square["major_axis_length"] > square["minor_axis_length"] > 0
    assert (square["mean_intensity_ch0"], square["mean_intensity_ch1"], square["mean_intensity_ch2"]) == (10, 200, 2.25)
    assert (square["min_intensity_ch2"], square["max_intensity_ch2"]) == (0, 90)
    ring = {k: float(v) for k, v in rows[1].items()}
    assert ring["area"] == 400 - 42 and ring["solidity"] < 1.0
    assert float(rows[4]["area"]) == 2 and float(rows[3]["score"]) == 0.6


def test_grey_image_gives_plain_intensity_columns_and_scores_must_cover_labels():
    labels = synthetic_labels()
    table = ex.measurements(labels, np.full(labels.shape, 7.0))
    assert {"mean_intensity", "min_intensity", "max_intensity"} <= set(table) and "score" not in table
    assert np.all(table["mean_intensity"] == 7.0)
    with pytest.raises(InstanceTunerError, match="scores"):
        ex.measurements(labels, scores=np.ones(3))
    with pytest.raises(InstanceTunerError, match="does not match"):
        ex.measurements(labels, np.zeros((10, 10)))


def test_overlapping_masks_give_one_row_and_one_feature_each():
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 10:28, 10:28] = True  # overlaps mask 0
    masks[2, 0:3, 29:32] = True
    table = ex.measurements(np.zeros((32, 32), np.uint8), masks=masks, scores=np.array([0.5, 0.6, 0.7]))
    assert table["label"].tolist() == [1, 2, 3]
    assert table["area"].tolist() == [256, 324, 9]
    assert table["centroid_y"].tolist() == [11.5, 18.5, 1.0] and table["bbox_x1"].tolist() == [20, 28, 32]
    assert table["score"].tolist() == [0.5, 0.6, 0.7]
    collection = ex.geojson_features(None, table, masks=masks)
    assert len(collection["features"]) == 3
    for feature, mask in zip(collection["features"], masks):
        np.testing.assert_array_equal(rasterise(feature["geometry"], mask.shape), mask)


# -- GeoJSON --------------------------------------------------------------------------------------------


def test_known_square_has_pixel_edge_coordinates_in_x_y_order():
    square = np.zeros((8, 24), bool)
    square[2:6, 10:20] = True
    (polygon,) = mask_polygons(square)
    assert polygon == [[[10, 2], [20, 2], [20, 6], [10, 6], [10, 2]]]
    xs, ys = zip(*polygon[0])
    assert (min(xs), max(xs), min(ys), max(ys)) == (10, 20, 2, 6)
    assert signed_area(polygon[0]) == 40  # exterior counter-clockwise (RFC 7946), area = pixel count


def test_geojson_is_a_valid_qupath_feature_collection(tmp_path):
    labels = synthetic_labels()
    table = ex.measurements(labels)
    collection = ex.geojson_features(labels, table, object_type="annotation", classification="Gland")
    path = ex.write_geojson(tmp_path / "a.geojson", collection)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 5
    for feature in data["features"]:
        props = feature["properties"]
        assert feature["type"] == "Feature" and props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Gland", "color": class_color("Gland")}  # QuPath needs a colour
        assert {"label", "area", "perimeter", "solidity"} <= set(props["measurements"])
        assert "centroid_x" not in props["measurements"]
    ring_feature = data["features"][1]
    assert ring_feature["geometry"]["type"] == "Polygon"
    outer, hole = ring_feature["geometry"]["coordinates"]
    for ring in (outer, hole):
        assert ring[0] == ring[-1] and len(ring) >= 5
    assert signed_area(outer) > 0 > signed_area(hole)
    hxs, hys = zip(*hole)
    oxs, oys = zip(*outer)
    assert min(oxs) < min(hxs) and max(hxs) < max(oxs) and min(oys) < min(hys) and max(hys) < max(oys)
    assert (min(hxs), max(hxs), min(hys), max(hys)) == (8, 14, 15, 22)
    # Pixels that meet only at a corner are two pieces of one object.
    assert data["features"][4]["geometry"]["type"] == "MultiPolygon"
    with pytest.raises(ex.ExportError, match="objectType"):
        ex.geojson_features(labels, table, object_type="cell")


def test_acceptance_geojson_rerasterises_to_the_same_objects(tmp_path):
    from skimage.draw import polygon as fill

    labels = synthetic_labels()
    path = ex.write_geojson(tmp_path / "a.geojson", ex.geojson_features(labels, ex.measurements(labels)))
    for feature in json.loads(path.read_text())["features"]:
        label = feature["properties"]["measurements"]["label"]
        geom = feature["geometry"]
        polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        mask = np.zeros(labels.shape, bool)
        for rings in polygons:
            piece = np.zeros(labels.shape, bool)
            for i, ring in enumerate(rings):
                xy = np.asarray(ring, float)
                rr, cc = fill(xy[:, 1] - 0.5, xy[:, 0] - 0.5, labels.shape)  # pixel centres at +0.5
                piece[rr, cc] = i == 0
            mask |= piece
        assert _iou(mask, labels == label) >= 0.95, label
        np.testing.assert_array_equal(mask, labels == label)  # in fact exact


def test_random_masks_outline_exactly():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((9, 11)) < 0.55
        polygons = mask_polygons(mask)
        assert sum(sum(signed_area(r) for r in poly) for poly in polygons) == mask.sum()
        np.testing.assert_array_equal(rasterise({"type": "MultiPolygon", "coordinates": polygons}, mask.shape), mask)
        for poly in polygons:
            for ring in poly:
                assert ring[0] == ring[-1] and len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple


# -- export_instances and safe writes ---------------------------------------------------------------------


def test_export_instances_writes_every_format(tmp_path):
    labels = synthetic_labels()
    options = ex.ExportOptions(tmp_path, "slide", ("tiff", "png", "csv", "geojson", "masks"), classification="Cell")
    written = ex.export_instances(labels, options, scores=np.linspace(0.1, 0.5, 5), recipe=None)
    assert [p.name for p in written] == ["slide.tif", "slide.png", "slide.csv", "slide.geojson", "slide_masks.npz"]
    with np.load(tmp_path / "slide_masks.npz") as npz:  # packed planes: the labels do not overlap, one plane
        assert npz["planes"].dtype == np.uint32 and npz["planes"].shape == (1, 48, 64)
        assert npz["labels"].tolist() == [1, 2, 3, 4, 5] and str(npz["layout"]) == "packed-planes"
        np.testing.assert_allclose(npz["scores"], np.linspace(0.1, 0.5, 5), rtol=1e-6)
        np.testing.assert_array_equal(npz["planes"][0] == 2, labels == 2)
    objects, ids, _ = ex.read_mask_stack(tmp_path / "slide_masks.npz")
    np.testing.assert_array_equal(objects.to_dense(), np.stack([labels == k for k in range(1, 6)]))
    crossing = np.stack([labels == 1, labels > 0])  # the second object holds the first: two planes
    stack = ex.write_mask_stack(tmp_path / "m.tif", crossing)
    assert tifffile.imread(stack).shape == (2, 48, 64) and tifffile.imread(stack).max() == 2
    objects, ids, _ = ex.read_mask_stack(stack)
    np.testing.assert_array_equal(objects.to_dense(), crossing)
    assert ids.tolist() == [1, 2]


def test_overwrite_is_refused_before_anything_is_written(tmp_path):
    labels = synthetic_labels()
    (tmp_path / "x.csv").write_text("mine")
    options = ex.ExportOptions(tmp_path, "x", ("tiff", "csv"))
    with pytest.raises(ex.OverwriteError, match="x.csv"):
        ex.export_instances(labels, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"] and (tmp_path / "x.csv").read_text() == "mine"
    options.overwrite = True
    ex.export_instances(labels, options)
    assert (tmp_path / "x.csv").read_text().startswith("label,area")


def test_a_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    (tmp_path / "old.tif").write_bytes(b"old")

    def broken(fh, data, **kwargs):
        fh.write(b"II*\x00 half a tiff")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    for name, overwrite in (("new.tif", False), ("old.tif", True)):
        with pytest.raises(ex.ExportError, match="No space left"):
            ex.write_label_tiff(tmp_path / name, synthetic_labels(), overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tif"]  # no temp file, no new file
    assert (tmp_path / "old.tif").read_bytes() == b"old"


def test_a_failing_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    def no_rename(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safe_write.os, "replace", no_rename)
    monkeypatch.setattr(safe_write.os, "link", no_rename)
    with pytest.raises(ex.ExportError, match="Permission denied"):
        ex.write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_targets_give_clear_errors(tmp_path):
    with pytest.raises(ex.ExportError, match="does not exist"):
        ex.write_text(tmp_path / "missing" / "a.csv", "x")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ex.ExportError, match="is a folder"):
        ex.write_text(tmp_path / "dir.csv", "x", overwrite=True)
    with pytest.raises(ex.ExportError, match="not a valid file name"):
        ex.export_targets(ex.ExportOptions(tmp_path, "a/b"))
    with pytest.raises(ex.ExportError, match="unknown export format"):
        ex.export_targets(ex.ExportOptions(tmp_path, "a", ("jpeg",)))
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ex.ExportError, match="no permission"):
            ex.write_text(locked / "a.csv", "x")


# -- labels larger than memory: tiled TIFF, written tile by tile ---------------------------------------------


def _zarr_labels(path, labels, chunks=(32, 32)):
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=labels.shape, chunks=chunks, dtype=labels.dtype, fill_value=0)
    z[:] = labels
    return z


def _big_labels(shape=(150, 230), high=1000) -> np.ndarray:
    """uint32 labels: random blocks of ids up to ``high``, with background."""
    rng = np.random.default_rng(1)
    labels = np.kron(rng.integers(0, high, (shape[0] // 10 + 1, shape[1] // 10 + 1)), np.ones((10, 10), np.int64))
    return labels[: shape[0], : shape[1]].astype(np.uint32)


def test_tiled_tiff_from_zarr_has_the_arrays_pixels_reading_a_tile_at_a_time(tmp_path, monkeypatch):
    import zarr

    labels = _big_labels(high=100_000)  # needs uint32
    z = _zarr_labels(tmp_path / "labels.zarr", labels)
    sizes = []
    get = zarr.Array.__getitem__

    def reading(self, key):
        block = get(self, key)
        sizes.append(np.size(block))
        return block

    monkeypatch.setattr(zarr.Array, "__getitem__", reading)
    path = ex.write_label_tiff_tiles(tmp_path / "big.tif", z, pixel_size=(0.5, 0.25), tile=32)
    monkeypatch.undo()
    assert sizes and max(sizes) <= 32 * 32  # never the whole array: one 32 x 32 tile at a time
    assert len(sizes) == 2 * 5 * 8  # 5 x 8 tiles, read once for the dtype and once to write
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32) and page.dtype == np.uint32
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.is_ome and 'PhysicalSizeX="0.25"' in tif.ome_metadata and 'PhysicalSizeY="0.5"' in tif.ome_metadata
        np.testing.assert_array_equal(tif.asarray(), labels)  # edge tiles (150 = 4.7 tiles) padded, then cut


def test_tiled_tiff_is_uint16_when_the_labels_fit_and_takes_dask(tmp_path):
    import dask.array as da

    labels = _big_labels(high=60_000)
    z = _zarr_labels(tmp_path / "labels.zarr", labels)
    assert ex.lazy_label_dtype(z, tile=32) is np.uint16 and ex.label_dtype(labels) is np.uint16
    for name, source in (("z.tif", z), ("d.tif", da.from_array(labels.astype(np.int64), chunks=40))):
        path = ex.write_label_tiff_tiles(tmp_path / name, source, tile=48)
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].dtype == np.uint16 and tif.pages[0].tilewidth == 48 and not tif.is_ome
            np.testing.assert_array_equal(tif.asarray(), labels)
    small = ex.write_label_tiff_tiles(tmp_path / "small.tif", z[:20, :30], tile=1024)
    with tifffile.TiffFile(small) as tif:  # the tile shrinks to the image (a multiple of 16)
        assert (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (32, 32)
        np.testing.assert_array_equal(tif.asarray(), labels[:20, :30])


def test_tiled_tiff_refuses_what_it_cannot_write(tmp_path):
    import dask.array as da

    with pytest.raises(ex.ExportError, match="expected \\(H, W\\)"):
        ex.write_label_tiff_tiles(tmp_path / "a.tif", da.zeros((2, 8, 8), np.uint32))
    with pytest.raises(ex.ExportError, match="negative"):
        ex.write_label_tiff_tiles(tmp_path / "a.tif", da.from_array(-np.ones((8, 8), np.int32)))
    with pytest.raises(ex.ExportError, match="integers"):
        ex.write_label_tiff_tiles(tmp_path / "a.tif", da.zeros((8, 8), np.float32))
    with pytest.raises(ex.ExportError, match="empty"):
        ex.write_label_tiff_tiles(tmp_path / "a.tif", da.zeros((0, 8), np.uint32))
    (tmp_path / "b.tif").write_bytes(b"mine")
    with pytest.raises(ex.OverwriteError):
        ex.write_label_tiff_tiles(tmp_path / "b.tif", da.zeros((8, 8), np.uint32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif"]


def test_export_instances_writes_lazy_labels_tiled_and_loads_them_only_when_small(tmp_path, monkeypatch):
    labels = _big_labels(high=40)
    z = _zarr_labels(tmp_path / "labels.zarr", labels)
    image = np.random.default_rng(0).integers(0, 255, labels.shape + (3,), dtype=np.uint8)
    options = ex.ExportOptions(tmp_path, "lazy", ("tiff", "csv"))
    written = ex.export_instances(z, options, image=image)
    assert [p.name for p in written] == ["lazy.tif", "lazy.csv"]
    with tifffile.TiffFile(tmp_path / "lazy.tif") as tif:  # tiled even though it would fit in memory
        assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), labels)
    ex.export_instances(labels, ex.ExportOptions(tmp_path, "eager", ("tiff", "csv")), image=image)
    assert (tmp_path / "lazy.csv").read_text() == (tmp_path / "eager.csv").read_text()
    with tifffile.TiffFile(tmp_path / "eager.tif") as tif:
        assert not tif.pages[0].is_tiled  # NumPy labels: written as before

    monkeypatch.setattr(ex, "MAX_IN_MEMORY_PIXELS", labels.size - 1)  # "too large to load"
    for formats in (("tiff", "csv"), ("geojson",), ("png", "masks")):
        with pytest.raises(ex.ExportError, match="whole label image in memory.*written tile by tile"):
            ex.export_instances(z, ex.ExportOptions(tmp_path, "huge", formats))
    assert not any(p.name.startswith("huge") for p in tmp_path.iterdir())  # refused before writing anything
    written = ex.export_instances(z, ex.ExportOptions(tmp_path, "huge", ("tiff",)), recipe={"format": "x"})
    assert [p.name for p in written] == ["huge.tif", "huge.recipe.json"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "huge.tif"), labels)

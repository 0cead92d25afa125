"""QuPath GeoJSON: every file the plugin writes passes QuPath's import rules (the vendored checker, exit 0),
and QuPath-style files (holes, MultiPolygons, classifications) read back as the same objects."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.io import export as ex
from napari_instance_tuner.core.io import geojson as gj

CHECKER = Path(__file__).resolve().parents[1] / "tools" / "qupath_geojson_check.py"


def check(path: Path, width: int, height: int, version: str = "0.6") -> subprocess.CompletedProcess:
    """Run the QuPath import checker on ``path`` (exit 0: QuPath imports every object unchanged)."""
    return subprocess.run([sys.executable, str(CHECKER), str(path), "--width", str(width), "--height", str(height),
                           "--qupath", version], capture_output=True, text=True, check=False)


def tricky_labels() -> np.ndarray:
    """Objects that trip naive writers: a hole, a diagonal pinch, two pieces, a spike, a hole touching a corner."""
    lab = np.zeros((40, 60), np.uint32)
    lab[2:12, 2:12] = 1
    lab[5:8, 5:8] = 0  # hole
    lab[15:18, 15:18] = 2
    lab[18:21, 18:21] = 2  # touches the first block at one corner only
    lab[25:30, 2:8] = 3
    lab[25:30, 20:26] = 3  # two separate pieces -> MultiPolygon
    lab[2:12, 30:40] = 4
    lab[6, 40:46] = 4  # one-pixel spike
    lab[20:32, 40:52] = 5
    lab[21, 41] = 0
    lab[22, 42] = 0  # hole pixels meeting diagonally
    lab[20, 46] = 0  # notch on the outline
    lab[35:38, 35:38] = 6
    lab[36, 36] = 0
    return lab


@pytest.mark.parametrize("version", ["0.4", "0.5", "0.6", "0.7"])
def test_written_geojson_passes_the_qupath_checker(tmp_path, version):
    lab = tricky_labels()
    image = np.random.default_rng(0).integers(0, 255, (*lab.shape, 3), dtype=np.uint8)
    collection = ex.geojson_features(lab, ex.measurements(lab, image), classification="Gland",
                                     pixel_size=(0.5, 0.5), model="three-branch-glas")
    path = ex.write_geojson(tmp_path / "objects.geojson", collection)
    result = check(path, lab.shape[1], lab.shape[0], version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_features_follow_qupath_conventions(tmp_path):
    lab = tricky_labels()
    collection = ex.geojson_features(lab, ex.measurements(lab), object_type="annotation", classification="Tumor",
                                     pixel_size=(0.25, 0.25), model="m")
    feats = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(feats) == 6
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == 6 and all(str(uuid.UUID(i)) == i for i in ids)
    props = feats[0]["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["metadata"] == {"model": "m"}
    assert props["measurements"]["area"] == 91  # 100 - 9-pixel hole
    assert props["measurements"]["Area µm^2"] == pytest.approx(91 * 0.0625)
    assert len(feats[0]["geometry"]["coordinates"]) == 2  # exterior + hole
    assert feats[2]["geometry"]["type"] == "MultiPolygon"


def test_round_trip_export_read_gives_the_same_objects(tmp_path):
    lab = tricky_labels()
    path = ex.write_geojson(tmp_path / "a.geojson", ex.geojson_features(lab, ex.measurements(lab)))
    objects = gj.read_geojson(path)
    assert [o.object_type for o in objects] == ["detection"] * 6
    back = gj.objects_to_labels(objects, lab.shape)
    for k in range(1, 7):
        assert np.array_equal(back == k, lab == k), k


def test_scaled_and_offset_labels_land_in_level0_coordinates(tmp_path):
    lab = np.zeros((20, 20), np.uint32)
    lab[4:8, 6:10] = 1
    collection = ex.geojson_features(lab, ex.measurements(lab), scale=(2.0, 2.0), offset=(100.0, 50.0))
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), max(xs), min(ys), max(ys)) == (62, 70, 108, 116)
    assert collection["features"][0]["properties"]["measurements"]["area"] == pytest.approx(64.0)


def test_reads_qupath_exports_with_holes_multipolygons_and_classes(tmp_path):
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[3, 3], [3, 6], [6, 6], [6, 3], [3, 3]]
    far = [[20, 0], [24, 0], [24, 4], [20, 4], [20, 0]]
    doc = [  # a bare array of features, as QuPath's scripting export writes
        {"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": "Polygon", "coordinates": [square, hole]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area": 91, "nan": "NaN"}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[far], [[[30.25, 0], [34.25, 0],
                                                                                          [34.25, 4], [30.25, 4], [30.25, 0]]]]},
         "properties": {"object_type": "detection", "classification": {"names": ["Tumor", "Positive"], "color": None},
                        "measurements": [{"name": "Area", "value": 32}]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
        {"type": "Polygon", "coordinates": [[[40, 40], [44, 40], [44, 44], [40, 44], [40, 40]]]},
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    objects = gj.read_geojson(path)
    assert len(objects) == 3
    assert [o.classification for o in objects] == ["Tumor", "Tumor: Positive", None]
    assert [o.object_type for o in objects] == ["annotation", "detection", "annotation"]
    assert objects[0].measurements == {"Area": 91.0} and objects[1].measurements == {"Area": 32.0}
    labels = gj.objects_to_labels(objects)
    assert labels.shape == (44, 44)
    assert (labels == 1).sum() == 91 and (labels == 2).sum() == 32 and (labels == 3).sum() == 16
    half = gj.objects_to_labels(objects, downsample=2)
    assert half.shape == (22, 22) and set(np.unique(half)) == {0, 1, 2, 3}
    shapes, classes = gj.objects_to_shapes(objects)
    assert len(shapes) == 4 and shapes[0].shape == (4, 2) and classes[:2] == ["Tumor", "Tumor: Positive"]


def test_invalid_rings_are_made_valid():
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    made = gj.feature([bowtie], classification="X")
    assert made["geometry"]["type"] == "MultiPolygon"
    assert made["properties"]["classification"]["color"] == gj.class_color("X")
    assert gj.feature([[[[0, 0], [5, 0], [10, 0], [0, 0]]]]) is None  # zero area: nothing to write


def test_bad_geojson_gives_clear_errors(tmp_path):
    (tmp_path / "x.geojson").write_text("not json")
    with pytest.raises(InstanceTunerError, match="not a JSON file"):
        gj.read_geojson(tmp_path / "x.geojson")
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(InstanceTunerError, match="no Polygon"):
        gj.read_geojson(tmp_path / "p.geojson")
    with pytest.raises(InstanceTunerError, match="does not exist"):
        gj.read_geojson(tmp_path / "missing.geojson")


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_traced_contours_pass_the_checker(tmp_path, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((200, 200)), 3)
    lab, _ = ndimage.label(noise > np.percentile(noise, 45))
    lab[rng.random(lab.shape) < 0.05] = 0  # ragged outlines: spikes, pinches, one-pixel holes
    lab = lab.astype(np.uint32)
    count = np.unique(lab[lab > 0]).size
    path = ex.write_geojson(tmp_path / "n.geojson", ex.geojson_features(lab, ex.measurements(lab)))
    result = check(path, 200, 200)
    assert result.returncode == 0, result.stdout
    assert len(gj.read_geojson(path)) == count
